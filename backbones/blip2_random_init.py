"""The offline ``random-init`` pieces of the blip2 backbone: a WordPiece tokenizer built with the
``tokenizers`` library, the processor and resolved ``Blip2Config``, and the check of a user ``config``
(see :mod:`brainharness.backbones.blip2`)."""
from __future__ import annotations

import difflib
import itertools

from brainharness.errors import ConfigError
from brainharness.weights import first_line as _first_line
from brainharness.weights import jsonable as _jsonable

# Pieces of the offline random-init tokenizer: WordPiece over single characters covers any
# lower-case ASCII text ("red" → r ##e ##d) and decodes back to it.
_CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789")
_PUNCT = list(".,;:!?'\"-()/&")
# Whole words next (WordPiece prefers the longest match), then letter pairs, so the vocabulary
# fills the model's and every id a random language model emits decodes to text.
_WORDS = ("a an the of in on at with and or is are to from by for near next above below under over left right "
          "top bottom middle centre center front back side beside behind there this that it its one two three "
          "four five some many small large big little tall long round square circle triangle line dot shape "
          "red green blue yellow orange purple pink white black gray grey brown dark light bright colour color "
          "picture image photo drawing view scene background sky grass water wall floor table room street road "
          "man woman person people child boy girl face head hand dog cat bird horse car bus train plane boat tree "
          "house building window door flower food plate cup bed chair sitting standing walking holding looking "
          "playing riding eating parked flying view of simple close up").split()


def build_tokenizer(vocab_size: int, fixed: dict[str, int], free: list[str], template: list[str],
                    roles: dict[str, str], max_length: int):
    """A WordPiece tokenizer built offline with the ``tokenizers`` library.

    ``fixed`` puts special tokens at the ids the model config names (e.g. OPT's ``</s>`` = 2),
    ``free`` special tokens take the first free ids, then single characters and their ``##``
    continuations; ``template`` is the token sequence around each text (``$A``); ``roles`` are
    the tokenizer's ``*_token`` arguments.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if len(set(fixed.values())) != len(fixed):
        raise ConfigError(f"blip2: special token ids collide: {fixed}")
    base = [*free, *_CHARS, *_PUNCT, *("##" + c for c in _CHARS)]
    slots = {i: name for name, i in fixed.items()}
    need = max(len(slots) + len(base), max(slots, default=-1) + 1) + 1  # +1: the processor's "<image>"
    if need > vocab_size:
        raise ConfigError(f"blip2: random-init needs vocab_size >= {need} for its offline tokenizer, the config "
                          f"has {vocab_size}")
    letters = _CHARS[:26]
    candidates = itertools.chain(
        base, _WORDS, ("##" + a + b for a in letters for b in letters), (a + b for a in letters for b in letters),
        ("".join(t) for n in itertools.count(3) for t in itertools.product(letters, repeat=n)))
    seen = set(slots.values())
    fill = (t for t in candidates if not (t in seen or seen.add(t)))
    # every id below vocab_size - 1 decodes; Blip2Processor adds "<image>" as the last one
    vocab = [slots[i] if i in slots else next(fill) for i in range(vocab_size - 1)]
    ids = {w: i for i, w in enumerate(vocab)}
    tok = Tokenizer(models.WordPiece(ids, unk_token=roles["unk_token"], max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.post_processor = processors.TemplateProcessing(
        single=" ".join(template), special_tokens=[(t, ids[t]) for t in dict.fromkeys(template) if t != "$A"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=max_length, **roles)


def check_config(config) -> dict:
    """``config`` (a dict or ``Blip2Config``) checked by ``Blip2Config``, unknown keys rejected;
    returns it as a JSON-able dict."""
    from transformers import Blip2Config

    if config is None:
        config = {}
    if isinstance(config, Blip2Config):
        config = config.to_dict()
    if not isinstance(config, dict):
        raise ConfigError(f"blip2: config must be a mapping of Blip2Config fields, got {type(config).__name__}")
    try:
        resolved = Blip2Config.from_dict(dict(config))
    except Exception as e:  # noqa: BLE001 - the library says what is wrong
        raise ConfigError(f"blip2: bad config: {_first_line(e)}") from None
    # transformers keeps unknown keys as attributes: a typo would silently mean the default
    checks = [("config", config, Blip2Config)]
    for key in ("vision_config", "qformer_config", "text_config"):
        if isinstance(config.get(key), dict):
            checks.append((f"config.{key}", config[key], type(getattr(resolved, key))))
    for where, given, cls in checks:
        known = set(cls().to_dict())
        unknown = sorted(set(given) - known)
        if unknown:
            close = difflib.get_close_matches(unknown[0], known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"blip2: {where}: unknown key(s) {', '.join(unknown)}{hint}")
    return _jsonable(config)


def random_init_processor(config_dict: dict, variant: str):
    """``(Blip2Config, Blip2Processor)`` of ``random-init``: the config with the offline tokenizer's
    image token id, a library-default ``BlipImageProcessor`` and the offline tokenizer."""
    from transformers import Blip2Config, Blip2Processor, BlipImageProcessor

    cfg = Blip2Config.from_dict(dict(config_dict))
    if variant == "generation":  # OPT-like: "</s>" is BOS and EOS, prepended to every text
        tc = cfg.text_config
        if tc.is_encoder_decoder:
            raise ConfigError("blip2: random-init builds a tokenizer for decoder-only language models only")
        bos = "</s>" if tc.bos_token_id == tc.eos_token_id else "<s>"
        fixed = {name: i for name, i in (("<pad>", tc.pad_token_id), (bos, tc.bos_token_id),
                                         ("</s>", tc.eos_token_id)) if i is not None}
        roles = {"unk_token": "<unk>", **{f"{r}_token": n for r, n in (("pad", "<pad>"), ("bos", bos),
                                                                        ("eos", "</s>")) if n in fixed}}
        template = [bos, "$A"] if bos in fixed else ["$A"]
        tokenizer = build_tokenizer(tc.vocab_size, fixed, ["<unk>"], template, roles,
                                    getattr(tc, "max_position_embeddings", 512))
    else:  # BERT-like, as the Q-Former's text side: "[CLS] text [SEP]"
        qc = cfg.qformer_config
        if not qc.use_qformer_text_input:  # the text path needs the Q-Former's text feed-forwards
            if (config_dict.get("qformer_config") or {}).get("use_qformer_text_input") is False:
                raise ConfigError("blip2: the retrieval variant needs qformer_config.use_qformer_text_input: "
                                  "true")
            qc.use_qformer_text_input = True
        fixed = {"[PAD]": qc.pad_token_id} if qc.pad_token_id is not None else {}
        roles = {"unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]",
                 **({"pad_token": "[PAD]"} if fixed else {})}
        tokenizer = build_tokenizer(qc.vocab_size, fixed, ["[UNK]", "[CLS]", "[SEP]", "[MASK]"],
                                    ["[CLS]", "$A", "[SEP]"], roles, qc.max_position_embeddings)
    size = cfg.vision_config.image_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    image_processor = BlipImageProcessor(size={"height": h, "width": w})  # the library's defaults otherwise
    processor = Blip2Processor(image_processor, tokenizer, num_query_tokens=cfg.num_query_tokens)
    # the processor prepends num_query_tokens image tokens to a text given with images; the
    # model must know their id (generation: placeholders for the queries; retrieval: stripped)
    image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token.content)
    if cfg.image_token_index is None:
        cfg.image_token_index = image_id
    elif cfg.image_token_index != image_id:
        raise ConfigError(f"blip2: config image_token_index={cfg.image_token_index}, but the random-init "
                          f"tokenizer's image token is {image_id}; leave image_token_index unset")
    return cfg, processor
