"""Book-keeping ("ghost") engine: exact alignments from one activation-only backward.

Examples do not interact in a transformer (attention, LayerNorm and dropout act within one
sequence), so the output gradient of sum_i m_i l_i at every layer is m_i times delta_i, the
output gradient of the unmasked loss. During the forward a torch function mode hands every
``F.linear``, ``F.embedding`` and ``F.layer_norm`` call that sees a tracked parameter to its
rule in :mod:`ghost_rules`, which runs the op with the parameter detached. One backward of
the unmasked loss then computes activation gradients only, and each rule turns its input and
output gradient into per-example terms of <grad l_i, G>: an extra GEMM per linear layer, a
gather per embedding. The weight gradients are computed once, when fairseq calls backward on
the masked loss, by the rules' plain reductions with the mask folded into the output
gradients. A tied parameter (shared embeddings and output projection) adds the terms of each
of its uses, which is exact by linearity.

Token granularity needs <grad l_{i,t}, G> per target position: one activation backward per
position (all examples at once), then one of the masked loss. ``jvp`` is faster there.

Shapes: B examples; every recorded op must have exactly one position dim of size B (fairseq's
layers run time-major, (T, B, C), its embeddings and output projection batch-major); the
fairseq glue pads a batch whose sequence length equals B by one padding position.
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .core import AlignedLoss, TokenLossFn, checked_parameters, refuse_gradient_norms, units
from .ghost_rules import RULES, GhostUnsupportedError, Rule, Use


def unsupported_parameters(model: nn.Module) -> List[str]:
    """Names of trainable parameters held by a module that no rule covers (e.g. fairseq's
    ``bias_k``); empty when the ghost engine can run on ``model``."""
    found = []
    for module_name, module in model.named_modules(remove_duplicate=False):
        for name, param in module._parameters.items():
            if param is None or not param.requires_grad:
                continue
            if not any(isinstance(module, r.modules) and name in r.roles for r in RULES.values()):
                found.append(f"{module_name}.{name} ({type(module).__name__})")
    return found


def ghost_problem(model: nn.Module) -> Optional[str]:
    """Why the ghost engine cannot run on ``model``, or None."""
    unsupported = unsupported_parameters(model)
    if unsupported:
        return "the ghost engine has no rule for " + ", ".join(unsupported)
    if any(hasattr(m, "precheckpoint_forward") for m in model.modules()):
        # fairseq's --checkpoint-activations: the recomputed forward would run outside the
        # rules and build weight gradients.
        return "the ghost engine cannot run with --checkpoint-activations"
    return None


@contextlib.contextmanager
def unfused_attention(model: nn.Module) -> Iterator[None]:
    """fairseq's ``MultiheadAttention`` hands its projection weights to one fused kernel
    (``F.multi_head_attention_forward``) unless ``skip_embed_dim_check`` is set; the rules
    need the per-projection ``F.linear`` calls, so the pass takes its explicit path (the same
    math; dropout draws its numbers in another order)."""
    switched = [m for m in model.modules() if getattr(m, "skip_embed_dim_check", None) is False]
    for module in switched:
        module.skip_embed_dim_check = True
    try:
        yield
    finally:
        for module in switched:
            module.skip_embed_dim_check = False


def _batch_axis(leading: Tuple[int, ...], batch_size: int) -> int:
    axes = [k for k, size in enumerate(leading) if size == batch_size]
    if len(axes) != 1:
        raise GhostUnsupportedError(
            f"ghost engine: an op over positions of shape {tuple(leading)} has no single "
            f"batch axis of size {batch_size} (pad the sequences to another length)"
        )
    return axes[0]


def _tensors(values: Sequence[Any]) -> Iterator[Tensor]:
    for value in values:
        if isinstance(value, Tensor):
            yield value
        elif isinstance(value, (list, tuple)):
            yield from (v for v in value if isinstance(v, Tensor))


class Tape:
    """The uses of one recorded forward, and what they give after each backward."""

    def __init__(self, model: nn.Module, params: Sequence[nn.Parameter], direction) -> None:
        self.params = list(params)
        self.position = {id(p): k for k, p in enumerate(params)}
        self.direction = [d.float() for d in direction]
        self.model = model  # for the names in an error message
        self.uses: List[Use] = []
        # Every rule's output depends on it, so one backward to it reaches every rule.
        self.anchor = torch.zeros((), device=self.params[0].device, requires_grad=True)

    def name(self, param: Tensor) -> str:
        return next((n for n, p in self.model.named_parameters() if p is param), "?")

    def record(self, rule: Rule, parameters: Dict[str, Tensor], leading) -> Use:
        use = Use(rule, parameters, tuple(leading))
        self.uses.append(use)
        return use

    def backward(self, outputs: Tensor, grad_outputs: Tensor, retain: bool) -> None:
        """One activation-only backward; every use receives its output gradient."""
        for use in self.uses:
            use.delta = None
        torch.autograd.grad(
            outputs, self.anchor, grad_outputs, retain_graph=retain, allow_unused=True
        )

    @torch.no_grad()
    def alignment(self, batch_size: int) -> Tensor:
        """(B,) float32: sum over uses of each example's <grad, G> terms."""
        total = torch.zeros(batch_size, device=self.anchor.device)
        for use in self.uses:
            if use.delta is None:
                continue  # the loss does not depend on this op's output
            direction = {
                role: self.direction[self.position[id(p)]] for role, p in use.parameters.items()
            }
            terms = use.rule.alignment(use, direction)
            axis = _batch_axis(use.leading, batch_size)
            others = [k for k in range(terms.dim()) if k != axis]
            total += terms.sum(dim=others) if others else terms
        return total

    def used(self) -> List[int]:
        """Positions of the parameters some use holds, each once."""
        return sorted({self.position[id(p)] for use in self.uses for p in use.parameters.values()})

    def gradients(self, example_weight: Optional[Tensor]) -> Dict[int, Tensor]:
        """Parameter gradients of the loss behind the latest output gradients, each
        example's weighted by ``example_weight`` (B,) (None: as they are)."""
        grads: Dict[int, Tensor] = {}
        for use in self.uses:
            if use.delta is None:
                continue
            weight = None
            if example_weight is not None:
                shape = [1] * len(use.leading)
                axis = _batch_axis(use.leading, example_weight.numel())
                shape[axis] = example_weight.numel()
                weight = example_weight.view(shape)
            for role, grad in use.rule.gradients(use, weight).items():
                k = self.position[id(use.parameters[role])]
                grad = grad.to(self.params[k].dtype)
                grads[k] = grad if k not in grads else grads[k].add_(grad)
        return grads


class Recording(TorchFunctionMode):
    """Hands calls with a tracked parameter to their rule; refuses any other use of one."""

    def __init__(self, tape: Tape) -> None:
        super().__init__()
        self.tape = tape

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        position = self.tape.position
        rule = RULES.get(func)
        if rule is not None:
            roles = rule.parameters(args, kwargs)
            tracked = {r: t for r, t in roles.items() if t is not None and id(t) in position}
            if tracked:
                for role, t in roles.items():
                    if role not in tracked and t is not None and t.requires_grad:
                        raise GhostUnsupportedError(
                            f"ghost engine: the {role} given to {func.__name__} is computed "
                            f"from parameters; no rule covers that"
                        )
                use = self.tape.record(rule, tracked, rule.leading(args, kwargs))
                return rule.run(use, self.tape.anchor, args, kwargs)
        result = func(*args, **kwargs)
        if any(t.requires_grad for t in _tensors([result])):
            for t in _tensors(list(args) + list(kwargs.values())):
                if id(t) in position:
                    raise GhostUnsupportedError(
                        f"ghost engine: no rule for {getattr(func, '__name__', func)} on "
                        f"parameter {self.tape.name(t)}: use --gglm-engine jvp"
                    )
        return result


class TapeGradients(torch.autograd.Function):
    """The masked loss as fairseq sees it: backward puts the tape's weight gradients,
    times the incoming gradient (fairseq's loss scale) over the pass's scale, into .grad."""

    @staticmethod
    def forward(ctx, value, tape, example_weight, scale, *params):
        ctx.tape, ctx.example_weight, ctx.scale = tape, example_weight, scale
        ctx.used = tape.used()  # the positions of params, in order
        return value.clone()

    @staticmethod
    def backward(ctx, grad_output):
        tape = ctx.tape
        grads = tape.gradients(ctx.example_weight)
        tape.uses = []  # frees the stored inputs and output gradients
        factor = grad_output / ctx.scale
        out = []
        for k in ctx.used:
            param = tape.params[k]
            grad = grads.get(k)
            out.append(torch.zeros_like(param) if grad is None else grad * factor.to(grad.dtype))
        return (None, None, None, None, *out)


def ghost_aligned_loss(
    model: nn.Module,
    token_loss: TokenLossFn,
    batch: Any,
    direction: Sequence[Tensor],
    granularity: str = "sentence",
    with_norms: bool = False,
    loss_scale: float = 1.0,
) -> AlignedLoss:
    """The engine contract, plus ``loss_scale``: the factor the activation backward runs at
    (fairseq's fp16 loss scale, so that small output gradients do not flush to zero); the
    alignments are divided by it and do not depend on it.

    The returned ``token_losses`` are detached: train on ``masked_loss(mask)``, once.
    """
    if with_norms:
        refuse_gradient_norms("ghost")
    if not loss_scale > 0:
        raise ValueError(f"loss_scale must be > 0, got {loss_scale}")
    params = checked_parameters(model, direction, granularity)
    problem = ghost_problem(model)
    if problem is not None:
        raise GhostUnsupportedError(problem + ": use --gglm-engine jvp")
    tape = Tape(model, params, direction)
    with unfused_attention(model), Recording(tape):
        token_losses, extras = token_loss(model, batch)
    if not token_losses.requires_grad:
        raise GhostUnsupportedError("ghost engine: the loss depends on no recorded layer")
    unit_losses = units(token_losses, granularity)
    batch_size = token_losses.shape[0]
    if granularity == "sentence":
        tape.backward(unit_losses, torch.full_like(unit_losses, loss_scale), retain=False)
        alignment = tape.alignment(batch_size) / loss_scale
    else:
        alignment = torch.zeros(token_losses.shape, device=token_losses.device)
        for t in range(token_losses.shape[1]):
            column = torch.zeros_like(token_losses)
            column[:, t] = loss_scale
            tape.backward(token_losses, column, retain=True)
            alignment[:, t] = tape.alignment(batch_size) / loss_scale

    def masked_loss(mask: Tensor) -> Tensor:
        value = (unit_losses.detach() * mask).sum()
        example_weight = mask
        if granularity == "token":  # the masked output gradients, by one more backward
            tape.backward(token_losses, mask.to(token_losses.dtype) * loss_scale, retain=False)
            example_weight = None
        used = [tape.params[k] for k in tape.used()]
        return TapeGradients.apply(value, tape, example_weight, loss_scale, *used)

    return AlignedLoss(token_losses.detach(), alignment, None, extras, masked_loss)

