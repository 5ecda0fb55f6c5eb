"""Data, torch-free: reading sources (builtin, files, saved folders, the hub), splits, labels,
corpora for language models, tokenizers, and the tokenized cache a trial reads."""

from lbsearch.data.cache import META_FILE, TOKENIZER_DIR, PreparedData, load_arrays, prepare_data
from lbsearch.data.tokenizer import OFFLINE_MODEL_HINT, load_tokenizer, local_model_type, model_source

__all__ = ['META_FILE', 'TOKENIZER_DIR', 'PreparedData', 'load_arrays', 'prepare_data', 'OFFLINE_MODEL_HINT', 'load_tokenizer', 'local_model_type', 'model_source']
