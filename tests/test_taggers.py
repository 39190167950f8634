"""Caption-only taggers: spaCy nouns, and the LLM tagger against a local HTTP server."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ttd.errors import TTDError
from ttd.taggers import LLMTagger, NounTagger, chat_completions_url, create_tagger, parse_tag_answer

CAPTION = "A red stop sign on a stone road."


# --- nouns ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nouns():
    pytest.importorskip("spacy")
    return NounTagger()


def test_noun_tagger_on_captions(nouns):
    captions = [CAPTION, "A man's bike, parked near the well-lit café.", "woman spends time in a jacuzzi", "Two dogs playing with a frisbee"]
    assert nouns.tag_batch(captions) == [
        ["stop", "sign", "stone", "road"],
        ["mans", "bike", "café"],  # "man's" is one whitespace word: its candidate is "mans"
        ["woman", "time", "jacuzzi"],
        ["dogs", "frisbee"],
    ]
    assert nouns.tag(captions[0]) == ["stop", "sign", "stone", "road"]


def test_noun_tagger_without_spacy(monkeypatch):
    monkeypatch.setitem(sys.modules, "spacy", None)  # makes `import spacy` raise ImportError
    with pytest.raises(TTDError) as err:
        NounTagger().tag("a dog")
    assert str(err.value) == "the noun tagger needs spaCy and its English model: pip install 'ttd[nlp]'"


def test_noun_tagger_with_unknown_model():
    pytest.importorskip("spacy")
    with pytest.raises(TTDError) as err:
        NounTagger("no_such_spacy_model").tag("a dog")
    assert str(err.value) == "cannot load the spaCy model 'no_such_spacy_model' (OSError): pip install 'ttd[nlp]'"


def test_unknown_tagger_name():
    with pytest.raises(TTDError, match=r"^unknown tagger 'verbs'; choose from nouns, llm$"):
        create_tagger("verbs")


# --- LLM answers ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "answer, expected",
    [
        ('["stop", "sign", "road"]', ["stop", "sign", "road"]),
        ('Sure!\n```json\n{"words": ["Road", "SIGN", "car"]}\n```', ["sign", "road"]),
        ('The depicted words are "sign" and "road".', ["sign", "road"]),
        ("- sign\n- road\n- stone", ["sign", "stone", "road"]),
        ("1. sign\n2) road", ["sign", "road"]),
        ("sign, road and stone", ["sign", "stone", "road"]),
        ("stop sign, road", ["stop", "sign", "road"]),
        ('<think>maybe ["a", "red"]</think>["sign"]', ["sign"]),
        ("I cannot answer that.", []),
        ("", []),
        ('["sign", "road"', ["sign", "road"]),  # cut off by max_tokens: the quoted words still count
        ('[1, null, "road"]', ["road"]),
    ],
)
def test_parse_tag_answer(answer, expected):
    assert parse_tag_answer(answer, CAPTION) == expected


@pytest.mark.parametrize(
    "base",
    ["http://h:1", "http://h:1/", "http://h:1/v1", "http://h:1/v1/", "http://h:1/v1/chat/completions"],
)
def test_chat_completions_url(base):
    assert chat_completions_url(base) == "http://h:1/v1/chat/completions"


class _Server:
    """A chat-completions endpoint on 127.0.0.1 answering from a script of (status, body, delay)."""

    def __init__(self):
        self.script: list[tuple[int, str, float]] = []
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                status, text, delay = server.script.pop(0) if len(server.script) > 1 else server.script[0]
                time.sleep(delay)
                data = text.encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up (timeout test)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _reply(content) -> str:
    return json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]})


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


def _tagger(server, **kw) -> LLMTagger:
    return LLMTagger(server.url, "test-model", **{"retries": 2, "backoff": 0.0, "timeout": 5.0, **kw})


def test_llm_tagger_good_answer(server, monkeypatch):
    monkeypatch.setenv("TTD_LLM_API_KEY", "secret-key")
    server.script = [(200, _reply('["stop", "sign", "road", "car"]'), 0.0)]
    assert _tagger(server).tag(CAPTION) == ["stop", "sign", "road"]
    (request,) = server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["auth"] == "Bearer secret-key"
    assert request["body"]["model"] == "test-model"
    user = request["body"]["messages"][-1]["content"]
    assert CAPTION in user and "a, red, stop, sign, on, stone, road" in user


def test_llm_tagger_from_environment(server, monkeypatch):
    monkeypatch.setenv("TTD_LLM_URL", server.url + "/v1")
    monkeypatch.setenv("TTD_LLM_MODEL", "env-model")
    monkeypatch.delenv("TTD_LLM_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    server.script = [(200, _reply("road"), 0.0)]
    assert LLMTagger().tag(CAPTION) == ["road"]
    assert server.requests[0]["body"]["model"] == "env-model" and server.requests[0]["auth"] is None


def test_llm_tagger_batch_keeps_order(server):
    server.script = [(200, _reply('["dog", "cat", "sign", "road", "woman"]'), 0.0)]
    captions = ["a dog", "a cat", CAPTION, "woman in a jacuzzi", "the end"]
    assert _tagger(server, workers=3).tag_batch(captions) == [["dog"], ["cat"], ["sign", "road"], ["woman"], []]


def test_llm_tagger_retries_malformed_body_and_server_errors(server):
    server.script = [(200, "not json at all", 0.0), (503, "busy", 0.0), (200, _reply('["sign"]'), 0.0)]
    assert _tagger(server).tag(CAPTION) == ["sign"]
    assert len(server.requests) == 3


def test_llm_tagger_malformed_answer_gives_only_candidates(server):
    server.script = [(200, _reply("Depicted: a big truck, clouds, and ROAD!"), 0.0)]
    assert _tagger(server).tag(CAPTION) == ["road"]


def test_llm_tagger_gives_up_on_unreadable_responses(server):
    server.script = [(200, json.dumps({"choices": []}), 0.0)]
    with pytest.raises(TTDError) as err:
        _tagger(server).tag(CAPTION)
    assert str(err.value) == (
        f"LLM endpoint {server.url}/v1/chat/completions failed after 3 tries: unreadable response "
        "(IndexError: list index out of range); is the server running, and is --llm-url right?"
    )


def test_llm_tagger_client_error_is_not_retried(server):
    server.script = [(401, '{"error": "bad key"}', 0.0)]
    with pytest.raises(TTDError) as err:
        _tagger(server).tag(CAPTION)
    assert str(err.value) == (
        f'LLM endpoint {server.url}/v1/chat/completions answered HTTP 401 {{"error": "bad key"}}; '
        "check --llm-model and TTD_LLM_API_KEY"
    )
    assert len(server.requests) == 1


def test_llm_tagger_timeout(server):
    server.script = [(200, _reply('["sign"]'), 0.6)]
    with pytest.raises(TTDError) as err:
        _tagger(server, timeout=0.1, retries=1).tag(CAPTION)
    assert str(err.value) == (
        f"LLM endpoint {server.url}/v1/chat/completions failed after 2 tries: no answer within 0.1 s; "
        "is the server running, and is --llm-url right?"
    )
    assert len(server.requests) == 2


def test_llm_tagger_connection_refused():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    tagger = LLMTagger(f"http://127.0.0.1:{port}", "m", retries=1, backoff=0.0, timeout=2.0)
    with pytest.raises(TTDError) as err:
        tagger.tag(CAPTION)
    assert str(err.value).startswith(f"LLM endpoint http://127.0.0.1:{port}/v1/chat/completions failed after 2 tries: connection failed (")
    assert str(err.value).endswith("); is the server running, and is --llm-url right?")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"model": "m"}, "the LLM tagger needs an endpoint: pass --llm-url (or set TTD_LLM_URL), e.g. http://localhost:8000/v1"),
        ({"base_url": "http://x"}, "the LLM tagger needs a model name: pass --llm-model (or set TTD_LLM_MODEL)"),
        ({"base_url": "localhost:8000", "model": "m"}, "LLM endpoint 'localhost:8000' must start with http:// or https://"),
    ],
)
def test_llm_tagger_bad_settings(kwargs, message, monkeypatch):
    monkeypatch.delenv("TTD_LLM_URL", raising=False)
    monkeypatch.delenv("TTD_LLM_MODEL", raising=False)
    with pytest.raises(TTDError) as err:
        LLMTagger(**kwargs)
    assert str(err.value) == message


class _FixedTagger:
    name, label = "fixed", "fixed picks"

    def __init__(self, picks: dict[str, list[str]]):
        self.picks, self.calls = picks, []

    def tag_batch(self, captions):
        self.calls.append(list(captions))
        return [self.picks[c] for c in captions]


def test_a_tagger_as_tag_source_scores_its_picks_one_and_tags_each_caption_once():
    import torch

    from ttd.method.tags import SelectionInputs, TagSelection, batch_tags, candidate_tags
    from ttd.taggers import tagger_scorer

    captions = ["a dog and a cat", "a red ball", "a dog and a cat"]
    tagger = _FixedTagger({"a dog and a cat": ["dog", "cat"], "a red ball": ["ball"]})
    score = tagger_scorer(tagger)
    tags = batch_tags(captions, candidate_tags)
    inputs = SelectionInputs(captions, tags, None, torch.zeros(3, tags.valid.shape[1], 4), None, "softmax")
    scores = score(inputs)
    picked = TagSelection().decide(scores, tags.valid)
    assert [[w for w, s in zip(words, row) if s] for words, row in zip(tags.words, picked.tolist())] == [
        ["dog", "cat"], ["ball"], ["dog", "cat"]]
    score(inputs)
    assert tagger.calls == [["a dog and a cat", "a red ball"]]  # cached per caption
