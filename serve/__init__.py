"""Serving: nodes that hold spans of layers, the gateway with the OpenAI API, and discovery.

`serve.local` is the single-process reference generator: the baseline every swarm path is
compared against, and what `make demo` uses to answer in-process.
"""
