"""The gateway: the trusted side of the swarm.

It holds the embeddings, final norm, LM head, tokenizer and sampler (`head`), drives sessions
through chains of nodes with failover (`pipeline`), generates (`engine`), and speaks the OpenAI API
(`api`). Nodes only ever see hidden states.
"""
