"""The BERT model configuration, with the Hugging Face ``config.json`` field names.

``BertConfig.from_dict(json.load(open("config.json")))`` reads a Hugging Face BERT config
(unknown fields are ignored); ``to_dict()`` writes the fields hadref uses, and the model
file stores that dict as JSON.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from hadref.errors import HadrefError


@dataclass
class BertConfig:
    """Sizes and settings of a BERT encoder (Hugging Face field names and defaults).

    ``num_labels`` is the classifier head's output size (None: no head). The head exists
    when the parameters hold ``classifier.weight``; a file's config and parameters must
    agree on it.
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int = 0
    num_labels: int | None = None

    def __post_init__(self):
        self.validate()

    @property
    def head_size(self) -> int:
        """d = hidden_size / num_attention_heads."""
        return self.hidden_size // self.num_attention_heads

    def validate(self, where: str = "config") -> None:
        """Raise HadrefError naming the first bad field."""
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise HadrefError(f"{where}: field {name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise HadrefError(f"{where}: hidden_size {self.hidden_size} is not a multiple of "
                              f"num_attention_heads {self.num_attention_heads}")
        if self.hidden_act not in ("gelu",):
            raise HadrefError(f"{where}: field hidden_act must be 'gelu' (exact erf GELU), "
                              f"got {self.hidden_act!r}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
                raise HadrefError(f"{where}: field {name} must be in [0, 1), got {value!r}")
        if not (isinstance(self.layer_norm_eps, (int, float)) and self.layer_norm_eps > 0):
            raise HadrefError(f"{where}: field layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")
        if self.num_labels is not None and (not isinstance(self.num_labels, int)
                                            or self.num_labels < 1):
            raise HadrefError(f"{where}: field num_labels must be a positive integer or null, "
                              f"got {self.num_labels!r}")

    @classmethod
    def from_dict(cls, data: dict, where: str = "config") -> "BertConfig":
        """Build from a (Hugging Face or hadref) config dict; unknown fields are ignored.

        Hugging Face classification configs carry ``id2label`` rather than ``num_labels``;
        ``num_labels`` is taken from it only when the caller says the head exists
        (the parameters decide, see :mod:`hadref.engine.io`).
        """
        if not isinstance(data, dict):
            raise HadrefError(f"{where}: expected a JSON object, got {type(data).__name__}")
        if data.get("model_type", "bert") not in ("bert",):
            raise HadrefError(f"{where}: model_type must be 'bert', got {data.get('model_type')!r}")
        if data.get("position_embedding_type", "absolute") != "absolute":
            raise HadrefError(f"{where}: position_embedding_type must be 'absolute', "
                              f"got {data.get('position_embedding_type')!r}")
        if data.get("hidden_act") == "gelu_python":  # HF's other name for the erf GELU
            data = {**data, "hidden_act": "gelu"}
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        try:
            return cls(**_checked_types(kwargs, where))
        except HadrefError as err:   # validate() names "config": name the file's attribute
            text = str(err)
            if text.startswith("config: ") and where != "config":
                text = f"{where}: {text[len('config: '):]}"
            raise HadrefError(text) from None

    def to_dict(self) -> dict:
        """All fields as a JSON-ready dict."""
        return dataclasses.asdict(self)


def _checked_types(kwargs: dict, where: str) -> dict:
    ints = {"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "intermediate_size", "max_position_embeddings", "type_vocab_size", "pad_token_id"}
    for name in ints & kwargs.keys():
        value = kwargs[name]
        if isinstance(value, float) and value.is_integer():
            kwargs[name] = int(value)
        elif not isinstance(value, int) or isinstance(value, bool):
            raise HadrefError(f"{where}: field {name} must be an integer, got {value!r}")
    return kwargs
