"""Vision-language model reviews: an OpenAI-compatible HTTP client and a local ``transformers``
backend behind one ``complete_json`` interface, used by the dataset QC step and the benchmark
judges.

The local backend lives in :mod:`viva_pipelines.vlm.local` and is not imported here, so that
using the HTTP client does not pay for importing torch and transformers.
"""

from viva_pipelines.vlm.base import VlmBackend, VlmError, parse_json_reply
from viva_pipelines.vlm.cache import ByteStore, DirectoryStore, StorageStore
from viva_pipelines.vlm.client import ChatCompletionsClient, RateLimiter, RetryPolicy
from viva_pipelines.vlm.messages import Message, image_part, text_part
from viva_pipelines.vlm.review import PairVerdict, parse_verdict, review_pair, sample_frames

__all__ = [
    "ByteStore",
    "ChatCompletionsClient",
    "DirectoryStore",
    "Message",
    "PairVerdict",
    "RateLimiter",
    "RetryPolicy",
    "StorageStore",
    "VlmBackend",
    "VlmError",
    "image_part",
    "parse_json_reply",
    "parse_verdict",
    "review_pair",
    "sample_frames",
    "text_part",
]
