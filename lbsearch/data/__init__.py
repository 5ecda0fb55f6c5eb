"""Data, torch-free: reading sources (builtin, files, saved folders, the hub), splits, labels,
corpora for language models, tokenizers, and the tokenized cache a trial reads."""

from lbsearch.data.cache import PreparedData, load_arrays, prepare_data
from lbsearch.data.tokenizer import OFFLINE_MODEL_HINT, load_tokenizer, local_model_type, model_source

__all__ = ['PreparedData', 'load_arrays', 'prepare_data', 'OFFLINE_MODEL_HINT', 'load_tokenizer', 'local_model_type', 'model_source']
