"""Knowledge distillation from a teacher: logits, hidden states, attention maps and embeddings.

The loss terms (each weighted by ``weights``):

* ``logits``: KL(teacher || student) of the temperature-softened distributions, times ``T**2``
  (Hinton et al.), or MSE between logits (``logit_loss: mse``; always MSE for regression tasks).
* ``hidden``: MSE between student layer ``j``'s output and teacher layer ``layer_map[j]``'s output,
  averaged over the mapped layers and the non-padding tokens. Where the widths differ, the student's
  states go through a learned linear projection (TinyBERT's ``W_h``).
* ``attention``: MSE (or KL) between the attention probabilities of mapped layers, over the
  non-padding query positions. Needs the same number of heads.
* ``embedding``: MSE between the embedding outputs (the encoder's input), projected if needed.
* ``sentence``: the sentence embeddings: last-layer token states pooled as the model's
  sentence-transformers config says (``state.extras["pooling"]``, a
  :class:`~compactbert.nn.pooling.Pooling`; default mean over the attention mask, L2-normalised),
  compared by ``1 - cosine`` (``sentence_loss: cosine``, the default) or MSE over the vector's
  elements (``mse``, sentence-transformers' distillation loss). This is the objective of label-free
  upstream compression (``compress --task corpus``), where the student and the teacher are bare
  encoders: there the ``logits`` term does not exist (weight 0), and there is no task loss.
* ``cls``: the last layer's ``[CLS]`` state, what a classification head reads: ``1 - cosine``
  between student and teacher states after each is centred on its batch mean, i.e. how the state
  varies from sentence to sentence (the part a head can use; the shared part dominates a plain
  MSE). Upstream, a mean-pooled ``sentence`` objective alone lets that variation shrink (measured:
  4x on the 85%-sparse MiniLM), and tasks transferred from such a model learn little; needs
  batches of more than one sentence.

The task loss and the distillation loss are mixed as ``alpha * task + (1 - alpha) * kd``: Prune Once
for All uses ``alpha: 0.5, temperature: 2.0``; ``alpha: 0`` is pure distillation (XTC, TinyBERT).

How this method meets the loop (see :mod:`compactbert.methods.base`):

* ``forward_kwargs()`` asks the student for hidden states / attentions when those terms are on.
* ``attach`` switches student and teacher to eager attention when the attention term is on
  (Transformers returns attention probabilities only in eager mode), and registers the projections
  as the student submodule ``_distill_proj``, so the optimizer (built after ``attach``) trains them
  and checkpoints hold them; ``finalize`` removes it again.
* ``loss(state)`` runs the teacher itself on ``state.batch`` (labels left out) under
  ``torch.no_grad`` and returns ``(1 - alpha) * kd``. The teacher runs inside whatever autocast the
  loop's forward uses (bf16 when the run's ``bf16`` is on); ``teacher_bf16: true`` / ``false``
  forces bf16 autocast on / off for the teacher alone.
* With ``cache_teacher`` (``auto`` on a CPU for stages of two epochs or more), ``attach`` computes
  the teacher's outputs for every training example once (or finds them computed by an earlier run)
  and ``loss`` reads the batch's back instead of running the teacher
  (:mod:`compactbert.methods.teacher_cache`).
* ``task_loss_weight`` (= ``alpha``) is the factor the loop applies to its task loss.
"""

from __future__ import annotations

import inspect
import shutil
import sys
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from ..errors import UserError
from ..registry import register_method
from .base import Method, TrainState
from .layer_reduction import KEPT_LAYERS_KEY, num_layers

PROJ_NAME = "_distill_proj"  # student submodule holding the width projections
MAX_AUTO_CACHE_BYTES = 32 * 2**30  # cache_teacher: auto stays live above this


class DistillWeights(BaseModel):
    """Weight of each distillation term (0 turns a term off)."""

    model_config = ConfigDict(extra="forbid")
    logits: float = Field(1.0, ge=0)
    hidden: float = Field(0.0, ge=0)
    attention: float = Field(0.0, ge=0)
    embedding: float = Field(0.0, ge=0)
    sentence: float = Field(0.0, ge=0)
    cls: float = Field(0.0, ge=0)


def uniform_layer_map(n_student: int, n_teacher: int) -> list[int]:
    """Teacher layer (0-based) for each student layer, spread evenly and ending at the last layer.

    Student layer ``j`` learns from teacher layer ``round((j + 1) * n_teacher / n_student) - 1``:
    2 of 4 -> ``[1, 3]``; 4 of 12 -> ``[2, 5, 8, 11]`` (TinyBERT's ``g(m) = 3m``); 6 of 12 ->
    ``[1, 3, 5, 7, 9, 11]``.
    """
    if n_student > n_teacher:
        raise UserError(
            f"distillation: the student has {n_student} layers and the teacher {n_teacher}; give an explicit "
            "layer_map (one teacher layer per student layer) for a student deeper than its teacher"
        )
    return [int((j + 1) * n_teacher / n_student + 0.5) - 1 for j in range(n_student)]


def _hidden_size(model: torch.nn.Module) -> int:
    cfg = model.config
    return int(getattr(cfg, "hidden_size", None) or getattr(cfg, "dim"))


def _num_heads(model: torch.nn.Module) -> int:
    cfg = model.config
    return int(getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_heads"))


def set_eager_attention(model: torch.nn.Module) -> None:
    """Make ``model`` compute attention eagerly so that it can return attention probabilities."""
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    else:  # older Transformers
        model.config._attn_implementation = "eager"


def _has_head(model: torch.nn.Module) -> bool:
    """True for a model with a task head (``...ForSequenceClassification``), False for a bare encoder."""
    return getattr(model, "base_model", model) is not model


def _last_states(outputs: Any) -> torch.Tensor:
    """(batch, seq, hidden) last-layer token states: a bare encoder's ``last_hidden_state``, else the
    last of ``hidden_states``."""
    states = getattr(outputs, "last_hidden_state", None)
    if states is None and getattr(outputs, "hidden_states", None) is not None:
        states = outputs.hidden_states[-1]
    if states is None:
        raise RuntimeError("distillation: no token states to pool; merge forward_kwargs() (output_hidden_states)")
    return states


def _masked_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean squared error over the positions where ``mask`` is 1. a, b: (batch, seq, d); mask (batch, seq)."""
    sq = (a - b).pow(2)
    if mask is None:
        return sq.mean()
    m = mask.to(sq.dtype).unsqueeze(-1)  # (batch, seq, 1)
    return (sq * m).sum() / (m.sum() * sq.shape[-1]).clamp_min(1.0)


def _attention_loss(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None, kind: str) -> torch.Tensor:
    """Distance between attention probabilities s, t: (batch, heads, q, k), over real query rows."""
    if kind == "kl":
        # KL(t || s) per (batch, head, query) row; the clamp keeps log(0) finite at masked keys.
        row = (t * (t.clamp_min(1e-12).log() - s.clamp_min(1e-12).log())).sum(-1)  # (batch, heads, q)
        if mask is None:
            return row.mean()
        m = mask.to(row.dtype)[:, None, :].expand_as(row)
        return (row * m).sum() / m.sum().clamp_min(1.0)
    sq = (s - t).pow(2).mean(-1)  # (batch, heads, q): mean over keys
    if mask is None:
        return sq.mean()
    m = mask.to(sq.dtype)[:, None, :].expand_as(sq)
    return (sq * m).sum() / m.sum().clamp_min(1.0)


@register_method("distillation")
class Distillation(Method):
    """Distil a teacher into the student (logits, hidden states, attention, embeddings).

    Recipe keys:
        temperature: softening temperature T of the logit KL (scaled back by T**2). Default 1.0.
        logit_loss: ``kl`` (default) or ``mse``; regression tasks always use MSE.
        attention_loss: ``mse`` (default) or ``kl`` on attention probabilities.
        weights: per-term weights ``{logits: 1.0, hidden: 0.0, attention: 0.0, embedding: 0.0, sentence: 0.0,
            cls: 0.0}``.
        sentence_loss: ``cosine`` (default: ``1 - cos``) or ``mse`` for the ``sentence`` term.
        if_no_teacher: what ``compress`` does when it is given no ``--teacher`` (a transfer from an
            upstream model with ``--model``): ``error`` (default) or ``skip`` (the stage trains
            without this method, on the task loss alone; run.json records it).
        alpha: weight of the task loss: ``loss = alpha * task + (1 - alpha) * kd``. Default 0.5.
        layer_map: teacher layer (0-based) for each student layer. Default: the teacher layers a
            ``layer_reduction`` kept, else a uniform map (:func:`uniform_layer_map`).
        teacher_bf16: force bf16 autocast on (true) or off (false) for the teacher; default (null)
            follows the loop's autocast, i.e. the run's ``bf16``.
        cache_teacher: compute the teacher's outputs once per training example and read them back
            at every step (:mod:`compactbert.methods.teacher_cache`; float16 on disk, shared by runs
            with the same teacher and data). ``auto`` (default): on a CPU, for a stage of at least
            two epochs, when the cache takes at most ``MAX_AUTO_CACHE_BYTES`` and half the free
            disk. ``true``: always (an error when the disk is too small); ``false``: never.
    """

    type: Literal["distillation"] = "distillation"
    needs_teacher = True
    effects = frozenset({"distills"})

    temperature: float = Field(1.0, gt=0)
    logit_loss: Literal["kl", "mse"] = "kl"
    attention_loss: Literal["mse", "kl"] = "mse"
    sentence_loss: Literal["cosine", "mse"] = "cosine"
    if_no_teacher: Literal["error", "skip"] = "error"
    weights: DistillWeights = Field(default_factory=DistillWeights)
    alpha: float = Field(0.5, ge=0, le=1)
    layer_map: list[int] | None = None
    teacher_bf16: bool | None = None
    cache_teacher: bool | Literal["auto"] = "auto"

    _map: list[int] = PrivateAttr(default_factory=list)
    _teacher_keys: frozenset | None = PrivateAttr(default=None)
    _teacher_fp32: dict = PrivateAttr(default_factory=dict)  # Linear -> its own (weight, bias)
    _states_for_sentence: bool = PrivateAttr(default=False)  # a model with a head: pool hidden_states[-1]
    _cache: Any = PrivateAttr(default=None)  # a TeacherCache, when the teacher's outputs are cached

    @model_validator(mode="after")
    def _some_term(self) -> "Distillation":
        w = self.weights
        if w.logits == w.hidden == w.attention == w.embedding == w.sentence == w.cls == 0 and self.alpha < 1:
            raise ValueError("all distillation weights are 0; set at least one of logits/hidden/attention/embedding/"
                             "sentence/cls")
        if self.layer_map is not None and (not self.layer_map or min(self.layer_map) < 0):
            raise ValueError(f"layer_map {self.layer_map} must list one 0-based teacher layer per student layer")
        return self

    @property
    def task_loss_weight(self) -> float:
        """Factor the loop applies to the task loss: ``alpha``."""
        return self.alpha

    # ------------------------------------------------------------------ hooks
    def forward_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        if self.weights.hidden > 0 or self.weights.embedding > 0 or self.weights.cls > 0 or self._states_for_sentence:
            kw["output_hidden_states"] = True
        if self.weights.attention > 0:
            kw["output_attentions"] = True
        return kw

    def _make_layer_map(self, state: TrainState) -> None:
        """Teacher layer for each student layer (explicit, kept by layer_reduction, or uniform)."""
        student, teacher = state.model, state.teacher
        n_s, n_t = num_layers(student), num_layers(teacher)
        if self.layer_map is not None:
            if len(self.layer_map) != n_s or max(self.layer_map) >= n_t:
                raise UserError(
                    f"distillation.layer_map {self.layer_map}: needs {n_s} entries (one per student layer), "
                    f"each a teacher layer in 0..{n_t - 1}"
                )
            self._map = list(self.layer_map)
        else:
            kept = getattr(student.config, KEPT_LAYERS_KEY, None)
            if isinstance(kept, list) and len(kept) == n_s and max(kept) < n_t:
                self._map = list(kept)
            else:
                self._map = uniform_layer_map(n_s, n_t)
        state.extras["distill/layer_map"] = list(self._map)

    def _attach(self, state: TrainState) -> None:
        student, teacher = state.model, state.teacher
        if teacher is None:
            raise UserError("distillation needs a teacher model: pass --teacher RUN_OR_MODEL")
        if teacher is student:
            raise RuntimeError("distillation: the teacher must be a separate model from the student")
        teacher.eval()
        w = self.weights
        self._check_heads(student, teacher)
        if w.hidden > 0 or w.attention > 0:
            self._make_layer_map(state)
        if w.attention > 0:
            if _num_heads(student) != _num_heads(teacher):
                raise UserError(
                    f"distillation.weights.attention: the student has {_num_heads(student)} attention heads and "
                    f"the teacher {_num_heads(teacher)}; attention distillation needs equal head counts (set it to 0)"
                )
            set_eager_attention(student)
            set_eager_attention(teacher)
        d_s, d_t = _hidden_size(student), _hidden_size(teacher)
        if d_s != d_t and (w.hidden > 0 or w.embedding > 0 or w.sentence > 0 or w.cls > 0) \
                and not hasattr(student, PROJ_NAME):
            p = next(student.parameters())
            proj = torch.nn.ModuleDict()
            for term in ("hidden", "embedding", "sentence", "cls"):
                if getattr(w, term) > 0:
                    proj[term] = torch.nn.Linear(d_s, d_t)
            student.add_module(PROJ_NAME, proj.to(device=p.device, dtype=p.dtype))
        if self._teacher_autocast(state):
            self._teacher_linears_to_bf16(teacher)
        try:
            params = inspect.signature(teacher.forward).parameters
            named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
            # Only inputs the teacher names (a DistilBERT teacher takes no token_type_ids).
            self._teacher_keys = frozenset(n for n, p in params.items() if p.kind in named)
        except (TypeError, ValueError):
            self._teacher_keys = None
        self._cache = self._open_cache(state)

    def _cached_fields(self, teacher: torch.nn.Module) -> list[str]:
        """The teacher outputs the loss terms read (what a cache must hold)."""
        kw = self.forward_kwargs()
        w = self.weights
        fields = ["logits"] if w.logits > 0 else []
        fields += ["hidden_states"] if kw.get("output_hidden_states") else []
        fields += ["attentions"] if kw.get("output_attentions") else []
        if not _has_head(teacher) and (w.sentence > 0 or w.cls > 0):
            fields.append("last_hidden_state")
        return fields

    def _open_cache(self, state: TrainState) -> Any:
        """The stage's TeacherCache, or None when the teacher runs live (see ``cache_teacher``)."""
        from ..data.batching import Collator, forward_names, pad_id_of
        from .teacher_cache import TeacherCache, cache_root, estimate_bytes

        if self.cache_teacher is False or not state.features or not state.steps_per_epoch:
            return None
        auto = self.cache_teacher == "auto"
        if auto and (state.device.type != "cpu" or state.total_steps < 2 * state.steps_per_epoch):
            return None
        teacher = state.teacher
        fields = self._cached_fields(teacher)
        size = estimate_bytes(teacher, fields, [len(f["input_ids"]) for f in state.features])
        root = cache_root()
        existing = next(p for p in (root, *root.parents) if p.exists())
        free = shutil.disk_usage(existing).free
        if size > free // 2 or (auto and size > MAX_AUTO_CACHE_BYTES):
            why = (f"the teacher's outputs would take {size / 2**30:.1f} GiB, {free / 2**30:.1f} GiB is free in {root}")
            if auto:
                print(f"distillation: the teacher runs at every step ({why}; cache_teacher: auto)", file=sys.stderr)
                return None
            raise UserError(f"distillation.cache_teacher: {why}; set COMPACTBERT_CACHE to a larger disk or "
                            "cache_teacher: false")
        keys = forward_names(state.model) - {"labels", "label"}
        if self._teacher_keys is not None:
            keys &= self._teacher_keys
        return TeacherCache.open_or_build(
            teacher, state.features, sorted(keys), Collator(pad_id_of(state.model, state.tokenizer)),
            self.forward_kwargs(), fields, self._teacher_autocast(state), state.device, root=root,
            log=lambda msg: print(msg, file=sys.stderr),
        )

    def _check_heads(self, student: torch.nn.Module, teacher: torch.nn.Module) -> None:
        """The logits term needs two classifiers; the sentence term pools hidden states of models with a head."""
        headless = [name for name, net in (("student", student), ("teacher", teacher)) if not _has_head(net)]
        if self.weights.logits > 0 and headless:
            raise UserError(
                f"distillation.weights.logits: the {' and the '.join(headless)} {'has' if len(headless) == 1 else 'have'} "
                "no classification head (a bare encoder, as in upstream compression on a corpus), so there are no "
                "logits to distil; set logits: 0 and use sentence / hidden / attention"
            )
        self._states_for_sentence = self.weights.sentence > 0 and (_has_head(student) or _has_head(teacher))

    def _teacher_autocast(self, state: TrainState) -> bool:
        """Whether the teacher runs under bf16 autocast in this run."""
        if self.teacher_bf16 is not None:
            return self.teacher_bf16
        return bool(state.extras.get("bf16"))

    def _teacher_linears_to_bf16(self, teacher: torch.nn.Module) -> None:
        """Give the teacher's Linear layers bf16 copies of their weights for the run.

        Under bf16 autocast a Linear casts its fp32 weight to bf16 at every call; the teacher is
        frozen, so that cast is the same at every step: doing it once gives bitwise the same outputs
        and saves one pass over all teacher weights per step. ``finalize`` puts the fp32 tensors back.
        """
        for mod in teacher.modules():
            if isinstance(mod, torch.nn.Linear) and mod.weight.dtype == torch.float32 and mod not in self._teacher_fp32:
                self._teacher_fp32[mod] = (mod.weight, mod.bias)
                mod.weight = torch.nn.Parameter(mod.weight.detach().to(torch.bfloat16), requires_grad=False)
                if mod.bias is not None:
                    mod.bias = torch.nn.Parameter(mod.bias.detach().to(torch.bfloat16), requires_grad=False)

    def _restore_teacher(self) -> None:
        for mod, (weight, bias) in self._teacher_fp32.items():
            mod.weight, mod.bias = weight, bias
        self._teacher_fp32.clear()

    def _teacher_outputs(self, state: TrainState) -> Any:
        mask = (state.batch or {}).get("attention_mask")
        if self._cache is not None and state.batch_index is not None and mask is not None:
            return self._cache.outputs(state.batch_index, mask, state.device)
        batch = {k: v for k, v in (state.batch or {}).items() if k not in ("labels", "label")}
        if self._teacher_keys is not None:
            batch = {k: v for k, v in batch.items() if k in self._teacher_keys}
        with torch.no_grad():
            if self.teacher_bf16 is None:  # inherit the loop's autocast (bf16 runs: bf16 teacher)
                return state.teacher(**batch, **self.forward_kwargs(), return_dict=True)
            with torch.autocast(device_type=state.device.type, dtype=torch.bfloat16, enabled=self.teacher_bf16):
                return state.teacher(**batch, **self.forward_kwargs(), return_dict=True)

    def _loss(self, state: TrainState) -> torch.Tensor | None:
        so = state.outputs
        to = self._teacher_outputs(state)
        mask = (state.batch or {}).get("attention_mask")
        w = self.weights
        if (w.hidden > 0 or w.attention > 0) and len(self._map) != num_layers(state.model):
            self._make_layer_map(state)  # a method listed after this one changed the depth
        terms: dict[str, torch.Tensor] = {}
        if w.logits > 0:
            s, t = so.logits.float(), to.logits.float()  # (batch, labels)
            regression = bool(getattr(state.task, "is_regression", False)) or s.shape[-1] == 1
            if regression or self.logit_loss == "mse":
                terms["logits"] = F.mse_loss(s, t)
            else:
                T = self.temperature
                terms["logits"] = F.kl_div(
                    F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True, reduction="batchmean"
                ) * (T * T)
        if w.hidden > 0 or w.embedding > 0:
            hs, ht = so.hidden_states, to.hidden_states  # (layers + 1) x (batch, seq, hidden)
            if hs is None:
                raise RuntimeError("distillation: the student returned no hidden states; merge forward_kwargs()")
            proj = getattr(state.model, PROJ_NAME, None)
            if w.hidden > 0:
                lin = proj["hidden"] if proj is not None and "hidden" in proj else None
                per_layer = []
                for j, i in enumerate(self._map):
                    h = hs[j + 1].float()
                    per_layer.append(_masked_mse(lin(h) if lin is not None else h, ht[i + 1].float(), mask))
                terms["hidden"] = torch.stack(per_layer).mean()
            if w.embedding > 0:
                lin = proj["embedding"] if proj is not None and "embedding" in proj else None
                h = hs[0].float()
                terms["embedding"] = _masked_mse(lin(h) if lin is not None else h, ht[0].float(), mask)
        if w.sentence > 0:
            terms["sentence"] = self._sentence_loss(state, so, to, mask)
        if w.cls > 0:
            proj = getattr(state.model, PROJ_NAME, None)
            lin = proj["cls"] if proj is not None and "cls" in proj else None
            s_cls, t_cls = _last_states(so)[:, 0].float(), _last_states(to)[:, 0].float()
            s_cls = lin(s_cls) if lin is not None else s_cls
            terms["cls"] = (1.0 - F.cosine_similarity(s_cls - s_cls.mean(0), t_cls - t_cls.mean(0), dim=-1)).mean()
        if w.attention > 0:
            at, ast = to.attentions, so.attentions  # layers x (batch, heads, q, k)
            if ast is None or any(a is None for a in ast):
                raise RuntimeError(
                    "distillation: the student returned no attention probabilities; merge forward_kwargs() and "
                    "use eager attention (attach sets it)"
                )
            per_layer = [
                _attention_loss(ast[j].float(), at[i].float(), mask, self.attention_loss)
                for j, i in enumerate(self._map)
            ]
            terms["attention"] = torch.stack(per_layer).mean()
        if not terms:
            return None
        kd = sum(getattr(w, k) * v for k, v in terms.items())
        for k, v in terms.items():
            state.extras[f"distill/{k}"] = float(v.detach())
        return (1.0 - self.alpha) * kd

    def _sentence_loss(self, state: TrainState, so: Any, to: Any, mask: torch.Tensor | None) -> torch.Tensor:
        """1 - cosine (or MSE) between the pooled sentence embeddings of student and teacher."""
        from ..nn.pooling import DEFAULT_POOLING, Pooling, pool, pooling_from_dict

        pooling = state.extras.get("pooling") or DEFAULT_POOLING
        if isinstance(pooling, dict):
            pooling = pooling_from_dict(pooling, "distillation pooling")
        assert isinstance(pooling, Pooling)
        proj = getattr(state.model, PROJ_NAME, None)
        lin = proj["sentence"] if proj is not None and "sentence" in proj else None
        hs = _last_states(so).float()
        s = pool(lin(hs) if lin is not None else hs, mask, pooling)  # (batch, dim), normalised if the model says so
        t = pool(_last_states(to).float(), mask, pooling)
        if self.sentence_loss == "mse":
            return F.mse_loss(s, t)
        return (1.0 - F.cosine_similarity(s, t, dim=-1)).mean()

    def _finalize(self, state: TrainState) -> None:
        self._restore_teacher()
        self._cache = None
        if hasattr(state.model, PROJ_NAME):
            delattr(state.model, PROJ_NAME)  # training-only parameters: not part of the compressed model
