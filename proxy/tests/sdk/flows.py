"""Resource flows through keyrelay with the official SDKs (driven by proxy/tests/sdk.rs).

Usage: flows.py URL TOKEN. keyrelay at URL serves OpenAI at /v1, Anthropic at /anthropic and
Gemini at /gemini, in front of a mock where each key is its own project. Prints one line per
flow; any failure raises (non-zero exit).
"""

import io
import json
import sys
import time

import anthropic
import openai
from google import genai
import google.genai.errors  # noqa: F401 (genai.errors)
from google.genai import types

URL, TOKEN = sys.argv[1], sys.argv[2]


def openai_files_and_batches(client):
    line = json.dumps({"custom_id": "r", "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": "m", "messages": [{"role": "user", "content": "x" * 900}]}})
    lines = [line.replace('"r"', f'"r{i}"', 1) for i in range(30 * 1024 * 1024 // (len(line) + 1) + 1)]
    data = ("\n".join(lines) + "\n").encode()
    assert len(data) >= 30 * 1024 * 1024, len(data)
    f = client.files.create(file=("input.jsonl", data), purpose="batch")
    assert f.id.startswith("file-kr1_"), f.id
    assert f.bytes == len(data), (f.bytes, len(data))
    assert client.files.retrieve(f.id).id == f.id
    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    assert batch.id.startswith("batch_kr1_"), batch.id
    assert batch.input_file_id == f.id
    for _ in range(3):
        got = client.batches.retrieve(batch.id)
        assert got.status == "completed", got.status
        assert got.output_file_id and got.output_file_id.startswith("file-kr1_")
    out = client.files.content(got.output_file_id).content
    results = [json.loads(x) for x in out.splitlines()]
    assert len(results) == 1000 and results[0]["custom_id"] == "r0", len(results)
    print("openai files+batches ok", len(data))


class Unsized(io.RawIOBase):
    """A file the SDK cannot size (no fileno, no seek), so httpx sends the multipart chunked."""

    def __init__(self, data):
        self._data, self._at = data, 0

    def readable(self):
        return True

    def read(self, n=-1):
        end = len(self._data) if n is None or n < 0 else self._at + n
        out = self._data[self._at:end]
        self._at += len(out)
        return out


def openai_transcription(client):
    import hashlib
    audio = bytes((i * 7 + i // 251) % 256 for i in range(25 * 1000 * 1000))
    got = client.audio.transcriptions.create(model="whisper-1",
                                             file=("speech.mp3", Unsized(audio), "audio/mpeg"))
    want = f"file=speech.mp3 bytes={len(audio)} sha256={hashlib.sha256(audio).hexdigest()}"
    assert got.text == want + " chunked=true", got.text
    print("openai transcription ok", len(audio))


def openai_responses(client):
    first = client.responses.create(model="m", input="hi", store=True)
    assert first.id.startswith("resp_kr1_"), first.id
    prev = first
    for _ in range(4):
        nxt = client.responses.create(model="m", input="more", previous_response_id=prev.id)
        assert nxt.previous_response_id == prev.id
        prev = nxt
    assert client.responses.retrieve(prev.id).id == prev.id
    bg = client.responses.create(model="m", input="hi", background=True)
    assert bg.status == "queued", bg.status
    for _ in range(50):
        polled = client.responses.retrieve(bg.id)
        if polled.status == "completed":
            break
        time.sleep(0.05)
    assert polled.status == "completed", polled.status
    seen = []
    for event in client.responses.retrieve(bg.id, stream=True, starting_after=2):
        seen.append(event)
    assert seen and all(e.sequence_number > 2 for e in seen), [e.sequence_number for e in seen]
    assert seen[-1].type == "response.completed" and seen[-1].response.id == bg.id
    print("openai responses ok", len(seen))


def openai_vector_store(client):
    f = client.files.create(file=("doc.txt", b"a document"), purpose="assistants")
    vs = client.vector_stores.create(name="docs", file_ids=[f.id])
    assert vs.id.startswith("vs_kr1_"), vs.id
    assert client.vector_stores.retrieve(vs.id).id == vs.id
    listed = client.vector_stores.files.list(vector_store_id=vs.id)
    assert [x.id for x in listed.data] == [f.id], listed
    attached = client.vector_stores.files.retrieve(file_id=f.id, vector_store_id=vs.id)
    assert attached.vector_store_id == vs.id
    print("openai vector store ok")


def anthropic_batches():
    client = anthropic.Anthropic(base_url=f"{URL}/anthropic", api_key=TOKEN, max_retries=0)
    batch = client.messages.batches.create(requests=[
        {"custom_id": f"q{i}", "params": {"model": "m", "max_tokens": 8,
                                           "messages": [{"role": "user", "content": "hi"}]}}
        for i in range(3)])
    assert batch.id.startswith("msgbatch_kr1_"), batch.id
    for _ in range(4):
        got = client.messages.batches.retrieve(batch.id)
        assert got.id == batch.id and got.processing_status == "ended"
        assert got.request_counts.succeeded == 3
    results = list(client.messages.batches.results(batch.id))
    assert sorted(r.custom_id for r in results) == ["q0", "q1", "q2"], results
    assert all(r.result.type == "succeeded" for r in results)
    print("anthropic message batches ok")


def gemini_files():
    # The SDK's resumable upload: its first step (with the API key) answers a link back to
    # keyrelay with the upload id sealed; its second step goes there with no key at all, and
    # the sealed id alone authenticates it and routes it to the key that started the upload.
    client = genai.Client(api_key=TOKEN, http_options=types.HttpOptions(base_url=f"{URL}/gemini",
                                                                       api_version="v1beta"))
    up = client.files.upload(file=io.BytesIO(b"some notes\n" * 1000),
                             config=types.UploadFileConfig(mime_type="text/plain",
                                                           display_name="notes"))
    name = up.name
    assert name.startswith("files/kr1_"), name
    assert up.display_name == "notes", up
    for _ in range(4):
        got = client.files.get(name=name)
        assert got.name == name, got.name
    # A listing is answered by one key (rotation's pick); over three calls, every key once.
    listed = [f.name for _ in range(3) for f in client.files.list()]
    assert name in listed, listed
    assert all(n.startswith("files/kr1_") for n in listed), listed
    client.files.delete(name=name)
    try:
        client.files.get(name=name)
        raise AssertionError("the file is still there after delete")
    except genai.errors.ClientError as e:
        assert e.code == 404, e
    print("gemini files ok")


def main():
    client = openai.OpenAI(base_url=f"{URL}/v1", api_key=TOKEN, max_retries=0, timeout=120)
    openai_files_and_batches(client)
    openai_transcription(client)
    openai_responses(client)
    openai_vector_store(client)
    anthropic_batches()
    gemini_files()


if __name__ == "__main__":
    main()
