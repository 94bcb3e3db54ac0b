"""Pretrained Hugging Face causal LMs of the Llama family, evaluated with posbench's protocols, its
RoPE scaling functions and its retrieval test: loading (``loading.py``), the rotary embedding
replaced by posbench's (``rotary.py``), the evaluator's view of the model (``adapter.py``),
passkey retrieval (``passkey.py``) and the model's name and label (``naming.py``); the model's
tokenizer as a corpus tokenizer is ``data/tokenizer.py``'s ``PretrainedTokenizer``.
``transformers`` is an optional dependency: ``pip install posbench[hf]``."""
