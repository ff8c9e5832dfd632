"""A seeded corpus with planted PII, secrets, duplicates, contamination and junk, and one scrubber."""

from __future__ import annotations

import pytest

from curate import synthetic
from curate.records import records_from_rows

EVAL = ["Please call the weather tool for the city of Lyon and give the temperature in celsius "
        "as one number only",
        "Convert twenty three Australian dollars to Norwegian krone using the currency tool now",
        "Start a fifty six minute timer called stretch and tell me when it is done please"]


@pytest.fixture(scope="session")
def planted():
    return synthetic.corpus(120, seed=7, eval_texts=EVAL)


@pytest.fixture(scope="session")
def records(planted):
    return records_from_rows(planted.traces, planted.feedback)


@pytest.fixture(scope="session")
def scrubber():
    from curate.scrub import Scrubber

    return Scrubber()
