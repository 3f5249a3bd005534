"""The RAG-style prompts of ``kvstore bench blend``, built from real, license-clean text.

Source: Python's own documentation, shipped in the standard library as ``pydoc_data.topics``
(the text behind ``help("assert")`` etc.; PSF License). Nothing is downloaded.

Documents: each topic is split into paragraphs (blank lines); consecutive paragraphs of one topic
are merged until the document reaches a length drawn from [min_tokens + 50, max_tokens - 50]
(never past max_tokens; an over-long paragraph is cut at line breaks). Documents under min_tokens
are dropped. Every document starts with its topic's heading ("Topic: The "assert" statement").

Prompts: a system segment (cacheable), 3-6 documents drawn from a shared pool in a random order
(so the same document is reused at different positions), and an uncached question asking about
the topic of one of the prompt's documents. Every third prompt takes 6 documents of at least
``long_doc_tokens`` tokens, which makes it 2,500+ tokens long. All draws are seeded.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

SYSTEM = ("<|im_start|>system\nYou are a helpful assistant. Answer the question using the "
          "documents provided by the user.<|im_end|>\n<|im_start|>user\nDocuments:\n\n")
QUESTIONS = (
    "According to the documents, what does the Python documentation say about {t}? "
    "Answer in one sentence.",
    "Summarize what the documents explain about {t}.",
    "Using only the documents above, explain {t} to a new Python programmer.",
    "Which rules do the documents give for {t}? Be brief.",
)
QUESTION_TEMPLATE = "Question: {q}<|im_end|>\n<|im_start|>assistant\n"


@dataclass(frozen=True)
class Document:
    title: str
    text: str  # the segment's text, separator included
    n_tokens: int


@dataclass(frozen=True)
class Prompt:
    system: str
    documents: tuple[Document, ...]
    question: str

    @property
    def n_tokens_estimate(self) -> int:
        return sum(d.n_tokens for d in self.documents)


def build_documents(
    count_tokens: Callable[[str], int], min_tokens: int = 200, max_tokens: int = 600,
    seed: int = 0,
) -> list[Document]:
    from pydoc_data.topics import topics

    rng = random.Random(seed)
    docs: list[Document] = []
    for name in sorted(topics):
        body = topics[name].strip()
        heading = body.splitlines()[0].strip() if body else name
        paragraphs = _paragraphs(body, count_tokens, max_tokens - 50)
        current: list[str] = []
        target = rng.randint(min_tokens + 50, max_tokens - 50)
        for para in paragraphs:
            candidate = "\n\n".join([*current, para])
            if current and count_tokens(candidate) > min(target, max_tokens - 20):
                docs.append(_document(heading, current, count_tokens))
                current, target = [], rng.randint(min_tokens + 50, max_tokens - 50)
            current.append(para)
        if current:
            docs.append(_document(heading, current, count_tokens))
    return [d for d in docs if min_tokens <= d.n_tokens <= max_tokens]


def build_prompts(
    documents: list[Document], n_prompts: int, seed: int = 0, pool_size: int = 72,
    long_doc_tokens: int = 430, long_every: int = 3,
) -> list[Prompt]:
    rng = random.Random(seed)
    long_docs = [d for d in documents if d.n_tokens >= long_doc_tokens]
    pool = rng.sample(documents, min(pool_size, len(documents)))
    long_pool = rng.sample(long_docs, min(max(12, pool_size // 4), len(long_docs)))
    prompts = []
    for i in range(n_prompts):
        if i % long_every == long_every - 1:
            docs = rng.sample(long_pool, 6)
        else:
            docs = rng.sample(pool, 3 + i % 3)
        subject = rng.choice(docs).title
        question = rng.choice(QUESTIONS).format(t=subject)
        prompts.append(Prompt(SYSTEM, tuple(docs), QUESTION_TEMPLATE.format(q=question)))
    return prompts


def _paragraphs(body: str, count_tokens: Callable[[str], int], limit: int) -> list[str]:
    out = []
    for para in (p.strip() for p in body.split("\n\n")):
        if not para:
            continue
        if count_tokens(para) <= limit:
            out.append(para)
            continue
        piece: list[str] = []
        for line in para.splitlines():
            if piece and count_tokens("\n".join([*piece, line])) > limit:
                out.append("\n".join(piece))
                piece = []
            piece.append(line)
        if piece:
            out.append("\n".join(piece))
    return out


def _document(heading: str, paragraphs: list[str], count_tokens: Callable[[str], int]) -> Document:
    text = f"Topic: {heading}\n" + "\n\n".join(paragraphs) + "\n\n"
    return Document(heading, text, count_tokens(text))
