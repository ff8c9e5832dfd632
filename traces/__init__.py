"""Trace store: consented agent traces and feedback in LanceDB, with export and real erasure.

Owns the row models and table schemas, accounts, keys and consent grants, the capture decision,
the durable log and its background writer, queries, export and erasure (docs/traces.md). It knows
nothing of the gateway beyond this: it calls `traces.capture.capture` with what it answered.
"""
