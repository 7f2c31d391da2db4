//! Which strings are resource ids, and which paths carry them: the provider prefixes kept on
//! keyrelay ids, the JSON fields whose ids are sealed in answers, and the route table that
//! says, once per request from a few prefix comparisons, whether a path is a resource route.

use super::codec::MARK;

/// Resource id prefixes kept in front of a keyrelay id, so SDK prefix checks still pass.
/// Children addressed under a parent's path (runs, thread messages, steps) are not listed:
/// the parent's id in the path already names the key.
const PREFIXES: [&str; 14] = [
    "file-",     // OpenAI files
    "batch_",    // OpenAI batches
    "resp_",     // OpenAI stored responses
    "vsfb_",     // OpenAI vector store file batches
    "vs_",       // OpenAI vector stores
    "asst_",     // OpenAI assistants
    "thread_",   // OpenAI threads
    "ftjob-",    // OpenAI fine-tuning jobs
    "cntr_",     // OpenAI containers
    "conv_",     // OpenAI conversations
    "upload_",   // OpenAI uploads
    "eval_",     // OpenAI evals
    "msgbatch_", // Anthropic message batches
    "file_",     // Anthropic files
];

/// Gemini resource names: `files/<id>`, `cachedContents/<id>`; the id after the slash is
/// sealed with an empty prefix, so the same form works as a path segment.
const NAMESPACES: [&str; 2] = ["files/", "cachedContents/"];

/// Fields of an answer whose value (a string, or an array of strings) is a resource id.
const ID_FIELDS: [&str; 24] = [
    "id",
    "file_id",
    "input_file_id",
    "output_file_id",
    "error_file_id",
    "vector_store_id",
    "previous_response_id",
    "response_id",
    "assistant_id",
    "thread_id",
    "batch_id",
    "fine_tuning_job_id",
    "training_file",
    "validation_file",
    "container_id",
    "conversation_id",
    "upload_id",
    "eval_id",
    "first_id",
    "last_id",
    "file_ids",
    "vector_store_ids",
    "result_files",
    "name",
];

/// Whether `root` (the first path segment after a version segment) is a resource route's:
/// one `match` (length, then bytes), so a stateless route pays a few comparisons.
fn is_resource_root(root: &str) -> bool {
    matches!(
        root,
        "files"
            | "uploads"
            | "batches"
            | "responses"
            | "vector_stores"
            | "assistants"
            | "threads"
            | "fine_tuning"
            | "containers"
            | "conversations"
            | "evals"
            | "cachedContents"
            | "upload"
    )
}

/// Whether a field of an answer holds resource ids.
pub fn is_id_field(name: &str) -> bool {
    ID_FIELDS.contains(&name)
}

/// A provider id as keyrelay seals it: the part kept in clear (`file-`, `files/`), the prefix
/// bound into the seal (empty for a Gemini name), and the rest.
#[derive(Debug, PartialEq, Eq)]
pub struct Split<'a> {
    pub clear: &'a str,
    pub bound: &'a str,
    pub rest: &'a str,
}

/// `s` as a provider resource id of a known shape; `field` is the JSON field it came from
/// (`name` holds Gemini names only, every other id field prefixed ids only).
pub fn split_id<'a>(field: &str, s: &'a str) -> Option<Split<'a>> {
    if field == "name" {
        let ns = NAMESPACES.iter().find(|n| s.starts_with(**n))?;
        let rest = &s[ns.len()..];
        return (!rest.is_empty() && !rest.contains('/')).then_some(Split {
            clear: ns,
            bound: "",
            rest,
        });
    }
    let p = PREFIXES.iter().find(|p| s.starts_with(**p))?;
    let rest = &s[p.len()..];
    (!rest.is_empty()).then_some(Split {
        clear: p,
        bound: p,
        rest,
    })
}

/// A string in keyrelay form: what is kept in clear, the prefix bound into the seal, and the
/// sealed payload. `bare` also accepts a form with no prefix (a Gemini id as a path segment).
pub fn split_sealed(s: &str, bare: bool) -> Option<(&str, &str, &str)> {
    let at = s.find(MARK)?;
    let (head, tail) = s.split_at(at);
    let payload = &tail[MARK.len()..];
    if head.is_empty() {
        return bare.then_some(("", "", payload));
    }
    if NAMESPACES.contains(&head) {
        return Some((head, "", payload));
    }
    PREFIXES.contains(&head).then_some((head, head, payload))
}

/// Whether `s` looks like a provider's own resource id (known prefix, not keyrelay form).
pub fn is_foreign(s: &str) -> bool {
    split_sealed(s, false).is_none()
        && (PREFIXES
            .iter()
            .any(|p| s.starts_with(p) && s.len() > p.len())
            || NAMESPACES
                .iter()
                .any(|n| s.starts_with(n) && s.len() > n.len()))
}

/// How a resource route's answer is treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Ids sealed in JSON answers and SSE events.
    Rewrite,
    /// A download (`/content`, `:download`, batch results): passed as it comes.
    Download,
}

/// The route class of `rest` (the path after the provider's route prefix): `None` for every
/// stateless endpoint (chat, completions, embeddings, messages, generateContent, models...).
pub fn classify(rest: &str) -> Option<Route> {
    let path = rest.strip_prefix('/').unwrap_or(rest);
    let (first, after) = path.split_once('/').unwrap_or((path, ""));
    let (root, after) = if first.starts_with("v1") {
        after.split_once('/').unwrap_or((after, ""))
    } else {
        (first, after)
    };
    let root = root.split_once(':').map_or(root, |(r, _)| r);
    let anthropic_batches = root == "messages" && after.starts_with("batches");
    if !(is_resource_root(root) || anthropic_batches) {
        return None;
    }
    let last = rest.rsplit_once('/').map_or(rest, |(_, l)| l);
    let download = last == "content" || last == "results" || last.ends_with(":download");
    Some(if download {
        Route::Download
    } else {
        Route::Rewrite
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_classified_by_their_root() {
        for stateless in [
            "/chat/completions",
            "/embeddings",
            "/models",
            "/v1/messages",
            "/v1/messages/count_tokens",
            "/v1beta/models/gemini:generateContent",
            "/v1beta/models/gemini:streamGenerateContent",
            "/v1beta/models/text-embedding-004:embedContent",
            "/completions",
            "/moderations",
            "/images/generations",
            "/images/edits",
            "/images/variations",
            "/audio/speech",
            "/audio/transcriptions",
            "/audio/translations",
            "",
        ] {
            assert_eq!(classify(stateless), None, "{stateless}");
        }
        assert_eq!(classify("/files"), Some(Route::Rewrite));
        assert_eq!(classify("/files/file-x/content"), Some(Route::Download));
        assert_eq!(classify("/responses/resp_1"), Some(Route::Rewrite));
        assert_eq!(classify("/v1/messages/batches"), Some(Route::Rewrite));
        assert_eq!(
            classify("/v1/messages/batches/m/results"),
            Some(Route::Download)
        );
        assert_eq!(classify("/v1beta/files/abc"), Some(Route::Rewrite));
        assert_eq!(classify("/upload/v1beta/files"), Some(Route::Rewrite));
        assert_eq!(classify("/v1beta/cachedContents"), Some(Route::Rewrite));
        // Every family the README's endpoint table calls "affinity".
        for resource in [
            "/uploads/upload_1/parts",
            "/batches/batch_1/cancel",
            "/responses/resp_1/input_items",
            "/vector_stores/vs_1/files",
            "/vector_stores/vs_1/file_batches",
            "/assistants/asst_1",
            "/threads/thread_1/messages",
            "/threads/thread_1/runs/run_1/steps",
            "/fine_tuning/jobs/ftjob_1/events",
            "/containers/cntr_1/files",
            "/conversations/conv_1/items",
            "/evals/eval_1/runs",
            "/v1/files",
        ] {
            assert!(classify(resource).is_some(), "{resource}");
        }
    }

    #[test]
    fn ids_split_by_their_shape() {
        let s = split_id("id", "file-abc").unwrap();
        assert_eq!((s.clear, s.bound, s.rest), ("file-", "file-", "abc"));
        assert!(split_id("id", "chatcmpl-1").is_none());
        assert!(split_id("name", "my vector store").is_none());
        assert!(split_id("name", "file-notes").is_none());
        let g = split_id("name", "files/abc").unwrap();
        assert_eq!((g.clear, g.bound, g.rest), ("files/", "", "abc"));
        assert_eq!(
            split_sealed("file-kr1_xyz", false),
            Some(("file-", "file-", "xyz"))
        );
        assert_eq!(
            split_sealed("files/kr1_xyz", false),
            Some(("files/", "", "xyz"))
        );
        assert_eq!(split_sealed("kr1_xyz", false), None);
        assert_eq!(split_sealed("kr1_xyz", true), Some(("", "", "xyz")));
        assert_eq!(split_sealed("hello kr1_xyz", false), None);
        assert!(is_foreign("file-abc"));
        assert!(!is_foreign("file-kr1_abc"));
        assert!(!is_foreign("hello"));
    }
}
