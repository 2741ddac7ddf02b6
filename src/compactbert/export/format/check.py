"""What a packed directory's files must say together, checked before anything is decoded.

The schema (:mod:`.schema`) says each field is of the right type; this module says the fields add
up, so that nothing declared can make the reader allocate more than the payload justifies:

* ``model.safetensors``'s header is parsed here first (bounded, only the dtypes this format
  writes, offsets that tile the data exactly);
* every tensor the runtime needs is in the manifest with the shape ``config.json`` implies (and no
  other tensor is), every part it names is stored, with the dtype and, where the shape decides it,
  the exact byte count its encoding gives; nothing stored goes unused;
* the config's dimensions are bounded by what the payload could hold: decoded to float32, the
  model may take at most :data:`DECODE_RATIO` times the bytes of ``model.safetensors`` (at least
  one stored bit per weight on average: a 1-bit model is just inside), or
  :data:`DECODE_FLOOR_BYTES` for small models.

Counts that depend on stored bitmaps (kept entries per row) are checked while decoding, where the
bitmaps are read (:func:`check_count`).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import UserError, short_repr
from .schema import bad_folder

__all__ = ["Stored", "read_header", "expected_tensors", "check_tensors", "check_count", "decoded_bytes",
           "DECODE_RATIO", "DECODE_FLOOR_BYTES", "MAX_HEADER_BYTES", "STORED_DTYPES"]

#: safetensors dtype -> bytes per element, for the dtypes this format writes
STORED_DTYPES = {"U8": 1, "F16": 2, "F32": 4, "I16": 2, "I32": 4}
FLOAT_CODES = {"float16": "F16", "float32": "F32"}
MAX_HEADER_BYTES = 8 * 1024 * 1024
DECODE_RATIO = 32
DECODE_FLOOR_BYTES = 64 * 1024 * 1024
MAX_ACT_PARAM_NUMEL = 65536


class Bad(ValueError):
    """A packed directory whose files do not add up (turned into one UserError line by the reader)."""


@dataclass(frozen=True)
class Stored:
    """One tensor of ``model.safetensors`` as its header declares it."""

    dtype: str
    shape: tuple[int, ...]
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def ceil8(nbits: int) -> int:
    return (int(nbits) + 7) // 8


def _header_entry(key: str, v: Any) -> tuple[Stored, tuple[int, int]]:
    if not isinstance(v, dict) or set(v) != {"dtype", "shape", "data_offsets"}:
        raise Bad(f"tensor {short_repr(key)} has a malformed header entry")
    dtype, shape, offs = v["dtype"], v["shape"], v["data_offsets"]
    if dtype not in STORED_DTYPES:
        raise Bad(f"tensor {short_repr(key)} has dtype {short_repr(dtype)}; this format stores {', '.join(STORED_DTYPES)}")
    ints = (lambda xs: isinstance(xs, list) and all(type(x) is int and 0 <= x < 2**53 for x in xs))
    if not ints(shape) or len(shape) > 2 or not ints(offs) or len(offs) != 2 or offs[1] < offs[0]:
        raise Bad(f"tensor {short_repr(key)} has a malformed shape or data offsets")
    st = Stored(dtype, tuple(shape), offs[1] - offs[0])
    if st.numel * STORED_DTYPES[dtype] != st.nbytes:
        raise Bad(f"tensor {short_repr(key)}: shape {shape} of {dtype} does not take {st.nbytes} bytes")
    return st, (offs[0], offs[1])


def read_header(path: Path, folder: Path) -> dict[str, Stored]:
    """The tensors ``model.safetensors`` declares (its JSON header, read without the data).

    Raises:
        UserError: a header that is too large, not JSON, or whose offsets do not tile the data.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise Bad("model.safetensors is too short to be a safetensors file")
            n = struct.unpack("<Q", head)[0]
            if n > MAX_HEADER_BYTES or n > size - 8:
                raise Bad(f"model.safetensors declares a header of {n} bytes (file: {size} bytes, at most "
                          f"{MAX_HEADER_BYTES} read)")
            raw = json.loads(f.read(n).decode("utf-8"))
        if not isinstance(raw, dict):
            raise Bad("the model.safetensors header is not a JSON object")
        raw.pop("__metadata__", None)
        out, spans = {}, []
        for key, v in raw.items():
            out[key], span = _header_entry(key, v)
            spans.append(span)
        pos = 0
        for start, end in sorted(spans):
            if start != pos:
                raise Bad("model.safetensors' tensors overlap or leave gaps")
            pos = end
        if pos != size - 8 - n:
            raise Bad(f"model.safetensors' tensors take {pos} bytes but the file holds {size - 8 - n}")
        return out
    except Bad as e:
        raise bad_folder(folder, str(e)) from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise bad_folder(folder, f"model.safetensors has an unreadable header ({type(e).__name__}: {e})") from None


def _layer_tensors(c: dict[str, Any], i: int, heads: int, width: int, req: dict, opt: dict) -> None:
    hid, w, p = c["hidden_size"], heads * c["head_dim"], f"layer.{i}"
    (req if heads else opt).update({f"{p}.attn.{n}.weight": (w, hid) for n in "qkv"})
    opt.update({f"{p}.attn.{n}.bias": (w,) for n in "qkv"})
    (req if heads else opt)[f"{p}.attn.o.weight"] = (hid, w)
    opt[f"{p}.attn.o.bias"] = (hid,)
    (req if width else opt).update({f"{p}.ffn.up.weight": (width, hid), f"{p}.ffn.down.weight": (hid, width)})
    opt.update({f"{p}.ffn.up.bias": (width,), f"{p}.ffn.down.bias": (hid,)})
    for ln in ("attn.ln", "ffn.ln"):
        req.update({f"{p}.{ln}.weight": (hid,), f"{p}.{ln}.bias": (hid,)})


def expected_tensors(c: dict[str, Any]) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """(required, optional) tensor name -> shape that a (schema-checked) runtime config implies.

    Raises:
        Bad: per-layer lists that do not match ``num_layers``, more heads than the hidden size
            holds, or positions that do not fit the pad id (RoBERTa).
    """
    hid, emb = c["hidden_size"], c["embedding_size"]
    heads, ffn = c["heads_per_layer"], c["ffn_per_layer"]
    if len(heads) != c["num_layers"] or len(ffn) != c["num_layers"]:
        raise Bad(f"config.json has num_layers {c['num_layers']} but {len(heads)} heads_per_layer and "
                  f"{len(ffn)} ffn_per_layer entries")
    if any(h * c["head_dim"] > hid for h in heads):
        raise Bad(f"config.json: heads_per_layer {short_repr(heads)} of head_dim {c['head_dim']} exceed hidden_size {hid}")
    if c["position_style"] == "roberta" and c["max_position_embeddings"] < c["pad_token_id"] + 2:
        raise Bad("config.json: max_position_embeddings must exceed pad_token_id + 1 (RoBERTa positions)")
    if (c["head"] is None) != (c["num_labels"] == 0):
        raise Bad("config.json: num_labels must be 0 exactly when there is no head")
    vocab = c.get("vocab")
    rows = c["vocab_size"]
    if vocab and vocab["pruned"]:
        if vocab["kept"] > vocab["original_size"] or vocab["unk_token_id"] >= vocab["original_size"]:
            raise Bad("config.json: vocab.kept and vocab.unk_token_id must lie within vocab.original_size")
        rows = vocab["kept"]
    req = {"emb.word.weight": (rows, emb), "emb.position.weight": (c["max_position_embeddings"], emb),
           "emb.ln.weight": (emb,), "emb.ln.bias": (emb,)}
    opt: dict[str, tuple[int, ...]] = {"emb.proj.bias": (hid,)}
    if c["type_vocab_size"]:
        req["emb.token_type.weight"] = (c["type_vocab_size"], emb)
    (req if emb != hid else opt)["emb.proj.weight"] = (hid, emb)
    for i, (h, w) in enumerate(zip(heads, ffn)):
        _layer_tensors(c, i, h, w, req, opt)
    if c["head"] is not None:
        req["head.out.weight"] = (c["num_labels"], hid)
        opt.update({"head.out.bias": (c["num_labels"],), "head.dense.weight": (hid, hid), "head.dense.bias": (hid,)})
    return req, opt


def decoded_bytes(manifest: dict[str, Any], config: dict[str, Any]) -> int:
    """Bytes of the decoded model's float32 tensors (and int64 vocabulary map)."""
    total = sum(4 * math.prod(e["shape"]) for e in manifest["tensors"].values())
    vocab = config.get("vocab")
    if vocab and vocab["pruned"]:
        total += 8 * vocab["original_size"]
    return total


def _stored(header: dict[str, Stored], name: str, part: str, key: str, dtypes: tuple[str, ...]) -> Stored:
    st = header.get(key)
    if st is None:
        raise Bad(f"tensor {name!r}: part {part!r} names {short_repr(key)}, which model.safetensors does not hold")
    if st.dtype not in dtypes:
        raise Bad(f"tensor {name!r}: part {part!r} is stored as {st.dtype}; expected {' or '.join(dtypes)}")
    return st


def _exact(name: str, part: str, st: Stored, want: int, unit: str = "bytes") -> None:
    got = st.nbytes if unit == "bytes" else st.numel
    if got != want:
        raise Bad(f"tensor {name!r}: part {part!r} holds {got} {unit}; its shape needs {want}")


def _check_float(name: str, e: dict[str, Any], header: dict[str, Stored], selection: set[str]) -> None:
    if e["dtype"] is None or e["bits"] != (16 if e["dtype"] == "float16" else 32):
        raise Bad(f"tensor {name!r}: a float tensor needs dtype float16 (16 bits) or float32 (32 bits)")
    if set(e["parts"]) != selection | {"values"}:
        raise Bad(f"tensor {name!r}: parts {sorted(e['parts'])} do not fit encoding {e['encoding']!r}")
    st = _stored(header, name, "values", e["parts"]["values"], (FLOAT_CODES[e["dtype"]],))
    if e["encoding"] == "dense":
        _exact(name, "values", st, math.prod(e["shape"]), "values")


def _check_quant(name: str, e: dict[str, Any], header: dict[str, Stored], selection: set[str]) -> None:
    from ...nn.quant import ScaleLayout, WeightQuantizer, quantizer_from_spec
    from ...nn.quant.codes import bits_from_runs

    q, (rows, cols), parts = e["quant"], e["shape"], e["parts"]
    if e["dtype"] is not None:
        raise Bad(f"tensor {name!r}: a quantized tensor has no float dtype")
    row_bits = bits_from_runs(q["row_bits"], rows, f"tensor {name!r}: quant.row_bits")
    widths = sorted(set(row_bits.tolist()) - {0})
    layout = ScaleLayout(q["scale_layout"], q.get("group_size"))
    quantizer = quantizer_from_spec(q["spec"])
    if not isinstance(quantizer, WeightQuantizer) or quantizer.kind != q["kind"]:
        raise Bad(f"tensor {name!r}: quant.spec is not a weight quantizer of kind {short_repr(q['kind'])}")
    if int(quantizer.bits) != e["bits"] or (widths and max(widths) > e["bits"]):
        raise Bad(f"tensor {name!r}: bits {e['bits']} do not match its quantizer or its rows' widths")
    codes = {f"codes.{b}" for b in widths}
    params = set(q["params"])
    src = {"src_cols"} if "src_cols" in parts else set()
    if len(params) != len(q["params"]) or params & (codes | selection | {"src_cols", "values"}) \
            or set(parts) != selection | codes | params | src:
        raise Bad(f"tensor {name!r}: parts {sorted(parts)} do not fit its encoding, widths and parameters")
    for key in codes:
        _stored(header, name, key, parts[key], ("U8",))
    for key in params:
        _stored(header, name, key, parts[key], ("F16",))
    groups = q.get("groups")
    if layout.kind == "group":
        if groups is None:
            raise Bad(f"tensor {name!r}: a group layout needs quant.groups")
        width = groups * layout.group_size
        if src:
            _exact(name, "src_cols", _stored(header, name, "src_cols", parts["src_cols"], ("U8",)), ceil8(width))
        if width < cols or (not src and width != cols):
            raise Bad(f"tensor {name!r}: {groups} groups of {layout.group_size} columns do not cover {cols} columns")
    elif groups is not None or src:
        raise Bad(f"tensor {name!r}: quant.groups and src_cols belong to a group layout only")
    if e["encoding"] == "dense":  # the counts follow from the shape alone
        for b in widths:
            _exact(name, f"codes.{b}", header[parts[f"codes.{b}"]], ceil8(b * int((row_bits == b).sum()) * cols))
        stored_rows = int((row_bits > 0).sum())
        for key in params:
            _exact(name, key, header[parts[key]], layout.count(stored_rows, groups or 1), "values")


def check_entry(name: str, e: dict[str, Any], want: tuple[int, ...], header: dict[str, Stored]) -> None:
    """One (version-2) manifest entry against its expected shape and the stored tensors."""
    shape = tuple(e["shape"])
    if shape != tuple(want):
        raise Bad(f"tensor {name!r} has shape {list(shape)}; config.json implies {list(want)}")
    enc, parts, numel = e["encoding"], e["parts"], math.prod(shape)
    if len(shape) == 1 or numel == 0:
        if enc != "dense" or e["quant"] is not None:
            raise Bad(f"tensor {name!r}: an empty or 1-D tensor is stored dense, unquantized")
        if numel == 0 and parts:
            raise Bad(f"tensor {name!r}: an empty tensor stores nothing")
        if numel:
            _check_float(name, e, header, set())
        return
    selection = {"dense": set(), "rows": {"rows", "cols"}, "bitmask": {"mask"}}[enc]
    if enc == "rows":
        _exact(name, "rows", _stored(header, name, "rows", parts.get("rows", ""), ("U8",)), ceil8(shape[0]))
        _exact(name, "cols", _stored(header, name, "cols", parts.get("cols", ""), ("U8",)), ceil8(shape[1]))
    elif enc == "bitmask":
        _exact(name, "mask", _stored(header, name, "mask", parts.get("mask", ""), ("U8",)), ceil8(numel))
    if e["quant"] is None:
        _check_float(name, e, header, selection)
    else:
        _check_quant(name, e, header, selection)
    total = sum(header[k].nbytes for k in parts.values())
    if e["bytes"] != total:
        raise Bad(f"tensor {name!r}: the manifest says {e['bytes']} bytes; its parts hold {total}")


def _check_act_spec(lname: str, spec: dict[str, Any]) -> None:
    """An input quantizer's spec must build one of the registered activation kinds."""
    from ...nn.quant import ActivationQuantizer, quantizer_class

    kw = dict(spec)
    cls = quantizer_class(kw.pop("kind"), f"config.json: act_quant.{lname}: activation quantizer kind")
    if not issubclass(cls, ActivationQuantizer):
        raise Bad(f"config.json: act_quant.{lname}: {cls.kind!r} is not an activation quantizer")
    cls.from_spec(kw)


def _check_extras(manifest: dict[str, Any], config: dict[str, Any], header: dict[str, Stored]) -> None:
    """Tensors outside the entries: the config's vocabulary maps and input ranges, nothing else."""
    used = {k for e in manifest["tensors"].values() for k in e["parts"].values()}
    extra = set(manifest["extra_tensors"])
    want: dict[str, tuple[tuple[str, ...], int | None]] = {}
    vocab = config.get("vocab")
    if vocab and vocab["pruned"]:
        want["emb.vocab_keep"] = (("U8",), ceil8(vocab["original_size"]))
        if vocab["unseen"] == "nearest":
            want["emb.vocab_map"] = (("I16", "I32"), None)
    for lname, aq in (config.get("act_quant") or {}).items():
        if f"{lname}.weight" not in manifest["tensors"] or lname.startswith(("emb.word", "emb.position", "emb.token")):
            raise Bad(f"config.json: act_quant names {short_repr(lname)}, which is not a linear of this model")
        _check_act_spec(lname, aq["spec"])
        for pname, key in aq.items():
            if pname != "spec":
                if not isinstance(key, str):
                    raise Bad(f"config.json: act_quant.{lname}.{pname} must name a stored tensor")
                want[key] = (("F16", "F32"), None)
    if set(want) != extra or extra & used:
        raise Bad(f"manifest.json: extra_tensors {short_repr(sorted(extra))} do not match what config.json uses "
                  f"({short_repr(sorted(want))})")
    for key, (dtypes, nbytes) in want.items():
        st = _stored(header, "extra", key, key, dtypes)
        if nbytes is not None:
            _exact(key, key, st, nbytes)
        if key == "emb.vocab_map" and st.numel != vocab["original_size"]:
            raise Bad(f"emb.vocab_map holds {st.numel} ids; vocab.original_size is {vocab['original_size']}")
        if key not in ("emb.vocab_keep", "emb.vocab_map") and st.numel > MAX_ACT_PARAM_NUMEL:
            raise Bad(f"activation quantizer parameter {key!r} holds {st.numel} values")
    unused = set(header) - used - extra
    if unused:
        raise Bad(f"model.safetensors holds tensor(s) the manifest does not use: {short_repr(sorted(unused))}")


def check_tensors(manifest: dict[str, Any], config: dict[str, Any], header: dict[str, Stored], folder: Path) -> None:
    """Check that a (schema-checked) manifest, config and safetensors header add up.

    Raises:
        UserError: the first thing that does not (one line), or a model that would decode to more
            than the payload justifies.
    """
    from .read import upgrade_entry

    try:
        req, opt = expected_tensors(config)
        tensors = manifest["tensors"]
        missing = sorted(set(req) - set(tensors))
        if missing:
            raise Bad(f"the manifest lacks tensor(s) {short_repr(missing)} that config.json implies")
        unknown = sorted(set(tensors) - set(req) - set(opt))
        if unknown:
            raise Bad(f"the manifest lists tensor(s) {short_repr(unknown)} that config.json does not have")
        for name, e in tensors.items():
            want = req.get(name) or opt[name]
            if tuple(e["shape"]) != tuple(want):
                raise Bad(f"tensor {name!r} has shape {list(e['shape'])}; config.json implies {list(want)}")
        payload = sum(st.nbytes for st in header.values())
        if manifest["payload_bytes"] != payload:
            raise Bad(f"payload_bytes is {manifest['payload_bytes']} but model.safetensors stores {payload}")
        limit = max(DECODE_FLOOR_BYTES, DECODE_RATIO * payload)
        need = decoded_bytes(manifest, config)
        if need > limit:
            raise Bad(f"its shapes decode to {need:,} bytes of float32, more than {DECODE_RATIO}x its {payload:,}-byte "
                      f"payload (less than one stored bit per weight): the declared sizes do not add up")
        for name, e in tensors.items():
            check_entry(name, upgrade_entry(e), req.get(name) or opt[name], header)
        _check_extras(manifest, config, header)
    except Bad as e:
        raise bad_folder(folder, str(e)) from None
    except UserError as e:  # a quantizer spec its class refuses
        raise bad_folder(folder, str(e)) from None
    except (ValueError, TypeError) as e:  # a layout or spec value its class refuses
        raise bad_folder(folder, f"{type(e).__name__}: {e}") from None


def check_count(name: str, part: str, got: int, want: int) -> None:
    """A stored count read while decoding (kept values, codes, parameters) must be what the bitmaps say."""
    if got != want:
        raise Bad(f"tensor {name!r}: part {part!r} holds {got}; its bitmaps need {want}")
