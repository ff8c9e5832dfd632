"""Trace store: consented agent traces and feedback in LanceDB, with export and real erasure.

Not built yet; see the README's roadmap.
"""
