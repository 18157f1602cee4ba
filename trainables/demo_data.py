"""The synthetic `builtin:demo` sentiment task, generated from templates: for demos and tests only.

Movie-review-like sentences whose sentiment hinges on negation ("was not
good"), contrast ("dull at first, but the ending was moving": the clause after
"but" decides), intensifiers and irrelevant distractor clauses, with 5% of labels
flipped so accuracy stays below 100%. A bag of words cannot solve it, which is
what makes adapter configurations differ after a short fine-tune of MiniLM.
"""
from __future__ import annotations

import numpy as np
from datasets import Dataset, DatasetDict

_SUBJECTS = [
    "the film", "this movie", "the story", "the plot", "the acting", "the script", "the soundtrack",
    "the dialogue", "the ending", "the cast", "the direction", "the cinematography", "the sequel",
    "the premise", "the pacing", "the lead performance", "the screenplay", "the humor", "the finale",
]
_POSITIVE = [
    "good", "great", "brilliant", "charming", "moving", "delightful", "clever", "gripping", "beautiful",
    "funny", "memorable", "engaging", "touching", "superb", "thoughtful", "stunning", "witty", "heartfelt",
]
_NEGATIVE = [
    "bad", "dull", "boring", "clumsy", "tedious", "awful", "forgettable", "lifeless", "predictable",
    "shallow", "messy", "painful", "bland", "tiresome", "weak", "pointless", "flat", "incoherent",
]
_VERBS = ["was", "is", "felt", "seemed", "turned out to be"]
_NEGATED_VERBS = ["was not", "is not", "was never", "never felt", "did not seem", "was far from", "is hardly"]
_INTENSIFIERS = ["", "", "", "very ", "really ", "truly ", "incredibly ", "quite ", "remarkably ", "rather "]
_CONTRASTS = [", but ", ", yet ", ". however, ", "; still, ", " - but in the end "]
_OPENERS = ["", "", "", "honestly, ", "overall, ", "in the end, ", "to be fair, ", "i have to say "]
# Irrelevant to the label, some on purpose with sentiment words about something else.
_DISTRACTORS = [
    "i saw it on a rainy sunday", "my cousin recommended it", "the theater was half empty",
    "it runs about two hours", "i went in with no expectations", "the popcorn was terrible",
    "the seats were great", "we arrived late", "the trailer gave away nothing", "it is based on a novel",
    "the parking was awful", "my friend loved the poster", "it opened last friday",
]


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _clause(rng: np.random.Generator, positive: bool) -> str:
    """One clause with the given sentiment; a third are negated (the adjective has the opposite sign)."""
    subject = _pick(rng, _SUBJECTS)
    if rng.random() < 0.33:
        adjective = _pick(rng, _NEGATIVE if positive else _POSITIVE)
        return f"{subject} {_pick(rng, _NEGATED_VERBS)} {adjective}"
    adjective = _pick(rng, _POSITIVE if positive else _NEGATIVE)
    return f"{subject} {_pick(rng, _VERBS)} {_pick(rng, _INTENSIFIERS)}{adjective}"


def _demo_sentence(rng: np.random.Generator, label: int) -> str:
    positive = bool(label)
    kind = rng.random()
    if kind < 0.30:
        body = _clause(rng, positive)
    elif kind < 0.60:  # the clause after the contrast word decides; the first usually disagrees
        first = _clause(rng, not positive if rng.random() < 0.8 else positive)
        body = f"{first}{_pick(rng, _CONTRASTS)}{_clause(rng, positive)}"
    elif kind < 0.75:
        first = _clause(rng, not positive if rng.random() < 0.8 else positive)
        body = f"although {first}, {_clause(rng, positive)}"
    else:
        body = f"{_clause(rng, positive)} and {_clause(rng, positive)}"
    body = _pick(rng, _OPENERS) + body
    if rng.random() < 0.4:
        distractor = _pick(rng, _DISTRACTORS)
        body = f"{distractor}. {body}" if rng.random() < 0.5 else f"{body}. {distractor}"
    return body + " ."


def demo_split(seed: int, stream: int, n: int, label_noise: float) -> Dataset:
    # Independent streams per split (stream) and for noise, so sizes and noise never shift the text.
    text_rng = np.random.default_rng([seed, stream, 0])
    noise_rng = np.random.default_rng([seed, stream, 1])
    labels = text_rng.permutation(np.arange(n) % 2)  # balanced: n // 2 of each (+1 if n is odd)
    sentences = [_demo_sentence(text_rng, int(label)) for label in labels]
    # Flip the same number of each class, so noise keeps the balance.
    n_flip_per_class = int(round(label_noise * n)) // 2
    noisy = labels.copy()
    for cls in (0, 1):
        members = np.flatnonzero(labels == cls)
        noisy[noise_rng.choice(members, size=min(n_flip_per_class, len(members)), replace=False)] = 1 - cls
    return Dataset.from_dict({"sentence": sentences, "label": noisy.tolist()})


def demo_task(seed: int = 0, n_train: int = 2000, n_validation: int = 500, label_noise: float = 0.05) -> DatasetDict:
    """The synthetic `builtin:demo` sentiment task; same seed, same data."""
    return DatasetDict(
        train=demo_split(seed, 0, n_train, label_noise),
        validation=demo_split(seed, 1, n_validation, label_noise),
    )
