"""attreg against its peers on the same model, data and step (CPU).

Needs the optional peers (``pip install -e ".[bench]"``: path-explain, captum). The
model is scARE's latent encoder (scvi-tools' ``Encoder`` of ``attreg_sc.SCARE``) at paper
scale (3,346 genes -> 128 -> 10, LayerNorm, batch covariate); one training step =
attributions of ``F = sum of the latent mean`` (with the graph kept),
``mse(abs_minmax(attr), gt)``, backward, Adam.

* EG, k = 1 and k = 8, references from the minibatch: attreg (generic path and
  LinearPrefix path) vs path-explain's ``PathExplainerTorch`` (a Python loop over k).
* EG, k = 1 and k = 8, the reference attribution-priors implementation
  (``attributionpriors`` 0.1.3, TensorFlow): its ``AttributionPriorExplainer`` (TF1
  graph mode, run through ``tf.compat.v1``; references = the batch rolled by 1..k, as
  attreg's minibatch references) on the same encoder with the same weights, one
  ``Session.run`` per step, TF threads = torch threads; and, at k = 1, its TF2
  ``eager_ops.expected_gradients`` in a ``tf.function`` step (which is not EG: it
  differentiates with respect to the inputs; see tests/test_peer_attributionpriors.py).
* IG, m = 20 from zeros: attreg vs captum's ``IntegratedGradients`` with its gradient
  function patched to keep the graph (out of the box captum's attributions carry no
  graph to the parameters, so a loss on them trains nothing).
* IG at a layer (m = 20, the encoder's first layer's output): attreg's ``LayerTarget``
  vs captum 0.9's ``LayerIntegratedGradients`` with ``grad_kwargs={"create_graph": True}``
  (the graph-keeping option captum has for layer methods).

The model's epoch against scvi-tools' own SCVI is ``bench_scvi_tools.py``.

Ratios are ``peer / attreg`` (higher: attreg faster). The PyTorch variants take turns
in one process in blocks of ``STEADY_BLOCK`` consecutive steps (after one untimed step),
so that each is timed in its steady state, as in a training loop that repeats its own
step (taking turns step by step instead times every step right after another library's,
with that library's buffers in the caches: in two runs attreg's k = 1 step measured
3-5% slower that way and path-explain's 2-3% faster). TensorFlow runs alone in a worker
process of this script (in one process the two runtimes' thread pools get in each other's
way), alternating ``--tf-rounds`` times with attreg's steps in this process (each ``k``
timed on its own, as the worker times TensorFlow's); the median of the rounds' ratios is
reported with their range.

Run::

    python benchmarks/bench_peers.py [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from _common import interleaved_median_ms, print_table, record, write_json

import attreg
import attreg_sc as asc
from attreg import functional as AF

STEADY_BLOCK = 5  # consecutive steps of one variant per turn (see the module docstring)


class _EncoderView(torch.nn.Module):
    """scARE's latent encoder (the one model's scvi-tools ``Encoder``) as the peers use it:
    the attribution target (split after its first product: attreg's ``LinearPrefix``),
    the batch one-hot, and ``encoder(z, onehot) -> (latent mean,)``."""

    def __init__(self, model, x, b) -> None:
        super().__init__()
        from attreg_sc.fast.encoder_prefix import encoder_prefix

        self.enc = model.module.z_encoder
        self.n_batch = model.summary_stats.n_batch
        self.n_genes = x.shape[1]
        self._target = encoder_prefix(self.enc, self.n_genes, (x, b))

    def attribution_target(self, kind: str = "encoder"):
        return self._target

    def one_hot(self, b: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(b.view(-1).long(), self.n_batch).float()

    def encoder(self, z: torch.Tensor, onehot: torch.Tensor):
        return (self.enc.mean_encoder(self.enc.encoder(z, onehot)),)

    def tf_weights(self) -> dict:
        """The weights a TensorFlow port needs: W_x, b, W_c, the LayerNorm (no affine
        parameters in scvi-tools' layers: gamma 1, beta 0), dropout, the mean's layer."""
        layers = [m for m in self.enc.encoder.fc_layers[0] if m is not None]
        first, norm = layers[0], layers[1]
        drop = next((m for m in layers if isinstance(m, torch.nn.Dropout)), None)
        w = first.weight.detach()
        ones = torch.ones(w.shape[0])
        return {
            "w1": w[:, : self.n_genes], "b1": first.bias.detach(), "wc": w[:, self.n_genes :],
            "gamma": ones if norm.weight is None else norm.weight.detach(),
            "beta": 0 * ones if norm.bias is None else norm.bias.detach(),
            "eps": norm.eps, "rate": 0.0 if drop is None else drop.p,
            "wm": self.enc.mean_encoder.weight.detach(), "bm": self.enc.mean_encoder.bias.detach(),
        }  # fmt: skip


def _setup(n_cells: int, n_genes: int, batch: int):
    torch.manual_seed(0)  # the same weights in the attributionpriors worker process
    adata = asc.datasets.synthetic(
        n_cells=n_cells, n_genes=n_genes, n_cell_types=5, n_gt_genes=300, seed=0
    )
    asc.SCARE.setup_anndata(adata, batch_key="batch")
    model = asc.SCARE(adata, w_attr=0.0)
    idx = np.sort(np.random.default_rng(0).choice(adata.n_obs, batch, replace=False))
    model.module.train()
    rows = model.adata_manager.create_torch_dataset()[idx]
    x = torch.log1p(torch.from_numpy(np.asarray(rows["X"], dtype=np.float32)))
    b = torch.from_numpy(np.asarray(rows["batch"])).long()
    module = _EncoderView(model, x, b).train()
    gt = torch.from_numpy(adata.var["is_gt"].to_numpy().astype(np.float32))
    return adata, model, module, x, b, gt


def _step_fn(module, attribution_fn, gt):
    opt = torch.optim.Adam(module.parameters(), lr=1e-4, fused=True)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = AF.abs_minmax_mse_loss(attribution_fn(), gt)
        loss.backward()
        opt.step()

    return step


def _attreg_eg_step(module, x, b, gt, k: int):
    """attreg's EG training step (LinearPrefix path), the baseline of every EG ratio."""
    target = module.attribution_target("encoder")
    eg = attreg.ExpectedGradients(target, differentiable=True, check_inputs=False)
    g = torch.Generator().manual_seed(0)
    return _step_fn(
        module,
        lambda: eg.attribute(x, additional_forward_args=(b,), n_samples=k, generator=g),
        gt,
    )


def bench_eg(module, x, b, gt, ks, n_steps) -> list[dict]:
    from path_explain.explainers.path_explainer_torch import PathExplainerTorch

    target = module.attribution_target("encoder")
    onehot = module.one_hot(b)
    rows = []
    for k in ks:
        g = torch.Generator().manual_seed(0)
        slow = attreg.ExpectedGradients(
            target, differentiable=True, check_inputs=False, use_linear_prefix=False
        )
        pe = PathExplainerTorch(lambda z: module.encoder(z, onehot)[0].sum(1, keepdim=True))
        steps = {
            "attreg EG (LinearPrefix)": _attreg_eg_step(module, x, b, gt, k),
            "attreg EG (generic)": _step_fn(
                module,
                lambda slow=slow, k=k, g=g: slow.attribute(
                    x, additional_forward_args=(b,), n_samples=k, generator=g
                ),
                gt,
            ),
            "path-explain PathExplainerTorch": _step_fn(
                module,
                lambda pe=pe, k=k: pe.attributions(
                    x.detach().requires_grad_(), x, num_samples=k, use_expectation=True
                ),
                gt,
            ),
        }
        ms = interleaved_median_ms(steps, n_steps, block=STEADY_BLOCK)
        base = ms["attreg EG (LinearPrefix)"]
        for name, v in ms.items():
            rows.append(
                record(f"EG k={k}", name, batch_size=len(x), median_ms=v, peer_over_attreg=v / base)
            )
    return rows


class TF1Names:
    """``tensorflow`` for attributionpriors' TF1 code: ``tf.compat.v1`` plus the three TF1-only
    names it uses; optionally ``random_uniform`` / ``random.uniform`` fixed (to replay draws).
    """

    def __init__(self, base, uniform: np.ndarray | None = None) -> None:
        import tensorflow as tf

        self._base = base
        self.contrib = SimpleNamespace(framework=SimpleNamespace(is_tensor=tf.is_tensor))
        self.manip = SimpleNamespace(roll=tf.roll)
        if uniform is not None:

            def fixed(shape, *args, **kwargs):
                return tf.constant(uniform, dtype=tf.float32)

            self.random_uniform = fixed
            self.random = SimpleNamespace(uniform=fixed)

    def __getattr__(self, name):
        return getattr(self._base, name)


@contextlib.contextmanager
def tf1_graph_mode(threads: int | None = None):
    """A fresh TF1 graph + session with TF1 control flow (the explainer reads a tensor made
    inside a ``cond`` branch, which TF2's functional control flow forbids)."""
    import tensorflow as tf

    tf.compat.v1.disable_control_flow_v2()
    config = tf.compat.v1.ConfigProto(
        intra_op_parallelism_threads=threads or 0, inter_op_parallelism_threads=1 if threads else 0
    )
    try:
        with tf.Graph().as_default(), tf.compat.v1.Session(config=config) as sess:
            yield sess
    finally:
        tf.compat.v1.enable_control_flow_v2()


class _TFEncoder:
    """scARE's encoder in TensorFlow with the module's weights (train mode: dropout on);
    ``__call__`` returns ``F = sum of the latent mean`` per row."""

    def __init__(self, module) -> None:
        import tensorflow as tf

        w = module.tf_weights()

        def var(t):
            return tf.Variable(t.numpy().T if t.dim() == 2 else t.numpy())

        self.w1, self.b1, self.wc = var(w["w1"]), var(w["b1"]), var(w["wc"])
        self.gamma, self.beta, self.eps = var(w["gamma"]), var(w["beta"]), w["eps"]
        self.wm, self.bm = var(w["wm"]), var(w["bm"])
        self.rate = w["rate"]
        self.variables = [self.w1, self.b1, self.wc, self.gamma, self.beta, self.wm, self.bm]

    def __call__(self, inputs, onehot):
        import tensorflow as tf

        h = tf.matmul(inputs, self.w1) + self.b1 + tf.matmul(onehot, self.wc)
        mu, v = tf.nn.moments(h, axes=[1], keepdims=True)
        h = (h - mu) / tf.sqrt(v + self.eps) * self.gamma + self.beta
        h = tf.nn.dropout(tf.nn.relu(h), rate=self.rate)
        return tf.reduce_sum(tf.matmul(h, self.wm) + self.bm, axis=1)


def _tf_abs_minmax_mse(attr, gt):
    import tensorflow as tf

    a = tf.abs(attr)
    lo = tf.reduce_min(a, axis=1, keepdims=True)
    hi = tf.reduce_max(a, axis=1, keepdims=True)
    return tf.reduce_mean(tf.square((a - lo) / tf.maximum(hi - lo, 1e-30) - gt))


def _attributionpriors_medians(module, x, b, gt, ks, n_steps, threads) -> dict[str, float]:
    """Median step times (ms) of attributionpriors' TF1 explainer at each ``k`` (and of its
    TF2 eager op at k = 1): TensorFlow alone in this process (see ``--ap-worker``)."""
    import attributionpriors  # noqa: F401  (fails early where the extra is missing)
    import tensorflow as tf
    from attributionpriors import eager_ops
    from attributionpriors import ops as ap_ops

    onehot = module.one_hot(b).numpy()
    gt_np = gt.numpy()[None, :]
    out: dict[str, float] = {}
    real_tf = ap_ops.tf
    for k in ks:
        ap_ops.tf = TF1Names(tf.compat.v1)
        try:
            with tf1_graph_mode(threads) as sess:
                inp = tf.compat.v1.placeholder(tf.float32, (None, x.shape[1]))
                explainer = ap_ops.AttributionPriorExplainer()
                cond_input, train_eg = explainer.input_to_samples_delta(inp, "roll", k=k)
                enc_out = _TFEncoder(module)(cond_input, np.repeat(onehot, k, axis=0))
                eg = explainer.shap_value_op(enc_out, cond_input)
                loss = _tf_abs_minmax_mse(eg, gt_np)
                train = tf.compat.v1.train.AdamOptimizer(1e-4).minimize(loss)
                sess.run(tf.compat.v1.global_variables_initializer())
                feed = {inp: x.numpy(), train_eg: True}
                ms = interleaved_median_ms({"peer": lambda: sess.run(train, feed)}, n_steps)  # noqa: B023
        finally:
            ap_ops.tf = real_tf
        out[f"explainer k={k}"] = ms["peer"]
    if 1 in ks:
        x4 = tf.constant(x.numpy().reshape(len(x), -1, 1, 1))  # the op expects image shapes
        enc = _TFEncoder(module)
        opt = tf.keras.optimizers.Adam(1e-4)

        def model(z, training=True):
            return enc(tf.reshape(z, (len(x), -1)), onehot)

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                attr = eager_ops.expected_gradients(x4, None, model, False)
                loss = _tf_abs_minmax_mse(tf.reshape(attr, (len(x), -1)), gt_np)
            opt.apply_gradients(zip(tape.gradient(loss, enc.variables), enc.variables, strict=True))

        out["eager_ops k=1"] = interleaved_median_ms({"peer": step}, n_steps)["peer"]
    return out


def bench_attributionpriors(module, x, b, gt, ks, n_steps, threads, rounds, argv) -> list[dict]:
    """attributionpriors' explainer (and eager op at k = 1) vs attreg on the same step.

    TensorFlow and PyTorch each run alone in their own process (in one process their
    thread pools get in each other's way: TensorFlow's step measured up to 1.5x its
    standalone time): ``rounds`` times a worker process times the TensorFlow steps, then
    this process times attreg's; the ratio of each round is taken, and the median
    (with the range) reported."""
    import attributionpriors

    version = getattr(attributionpriors, "__version__", "0.1.3")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--ap-worker", *argv]
    peer_rounds, ours_rounds = [], []
    for _ in range(rounds):
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"attributionpriors worker failed:\n{proc.stderr[-2000:]}")
        peer_rounds.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        # each k timed on its own, as the worker times TensorFlow's (interleaving k = 1
        # with k = 8 evicts k = 1's data from the caches: +0.7 ms on its step)
        ours_rounds.append(
            {
                f"k={k}": interleaved_median_ms(
                    {"attreg": _attreg_eg_step(module, x, b, gt, k)}, n_steps
                )["attreg"]
                for k in ks
            }
        )
    rows = []
    for key, variant in [(f"explainer k={k}", "AttributionPriorExplainer (TF1)") for k in ks] + (
        [("eager_ops k=1", "eager_ops (not EG)")] if 1 in ks else []
    ):
        k = key.rsplit("=", 1)[1]
        peer = [r[key] for r in peer_rounds]
        ratios = [p / o[f"k={k}"] for p, o in zip(peer, ours_rounds, strict=True)]
        rows.append(
            record(
                f"EG k={k}",
                f"attributionpriors {version} {variant}",
                batch_size=len(x),
                median_ms=statistics.median(peer),
                peer_over_attreg=statistics.median(ratios),
                ratio_min=min(ratios),
                ratio_max=max(ratios),
                rounds=rounds,
            )
        )
    return rows


def bench_ig(module, x, b, gt, n_steps) -> list[dict]:
    import captum.attr
    from captum._utils.common import _run_forward

    target = module.attribution_target("encoder")
    onehot = module.one_hot(b)

    def forward(z):
        return module.encoder(z, onehot.repeat(z.shape[0] // onehot.shape[0], 1))[0].sum(1)

    def keep_graph(forward_fn, inputs, target_ind=None, additional_forward_args=None):
        with torch.autograd.set_grad_enabled(True):
            out = _run_forward(forward_fn, inputs, target_ind, additional_forward_args)
            return torch.autograd.grad(torch.unbind(out), inputs, create_graph=True)

    cig = captum.attr.IntegratedGradients(forward)
    cig.gradient_func = keep_graph
    ours = attreg.IntegratedGradients(target, differentiable=True, check_inputs=False)
    ours_generic = attreg.IntegratedGradients(
        target, differentiable=True, check_inputs=False, use_linear_prefix=False
    )
    variants = {
        "attreg IG (LinearPrefix)": lambda: ours.attribute(
            x, additional_forward_args=(b,), n_steps=20, method="riemann_trapezoid"
        ),
        "attreg IG (generic)": lambda: ours_generic.attribute(
            x, additional_forward_args=(b,), n_steps=20, method="riemann_trapezoid"
        ),
        "captum IG (graph-keeping gradient)": lambda: cig.attribute(
            x.detach().requires_grad_(), n_steps=20, method="riemann_trapezoid"
        ),
    }
    ms = interleaved_median_ms(
        {name: _step_fn(module, fn, gt) for name, fn in variants.items()},
        n_steps,
        block=STEADY_BLOCK,
    )
    base = ms["attreg IG (LinearPrefix)"]
    return [
        record("IG m=20", name, batch_size=len(x), median_ms=v, peer_over_attreg=v / base)
        for name, v in ms.items()
    ]


def bench_layer_ig(module, x, b, n_steps) -> list[dict]:
    """IG at a layer (the encoder's first linear layer's output, 128 units), with the graph
    kept: attreg's ``LayerTarget`` against captum 0.9's ``LayerIntegratedGradients`` with
    ``grad_kwargs={"create_graph": True}``; m = 20, the same loss on both."""
    import captum.attr

    target = module.attribution_target("encoder")
    layer = target.linear
    gt_hidden = torch.zeros(layer.out_features)
    gt_hidden[: layer.out_features // 4] = 1

    def forward(z, codes):
        return target(z, codes).sum(1)

    ours = attreg.IntegratedGradients(
        attreg.attr.LayerTarget(target, layer), differentiable=True, check_inputs=False
    )
    theirs = captum.attr.LayerIntegratedGradients(forward, layer)

    def attreg_layer():
        act = ours.forward_func.activations(x, b)
        return ours.attribute(act, additional_forward_args=(x, b), n_steps=20)

    def captum_layer():
        return theirs.attribute(
            x, additional_forward_args=(b,), n_steps=20, grad_kwargs={"create_graph": True}
        )

    ms = interleaved_median_ms(
        {
            "attreg IG at the layer (LayerTarget)": _step_fn(module, attreg_layer, gt_hidden),
            "captum LayerIntegratedGradients (create_graph)": _step_fn(
                module, captum_layer, gt_hidden
            ),
        },
        n_steps,
        block=STEADY_BLOCK,
    )
    base = ms["attreg IG at the layer (LayerTarget)"]
    return [
        record("layer IG m=20", name, batch_size=len(x), median_ms=v, peer_over_attreg=v / base)
        for name, v in ms.items()
    ]


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=12_000)
    p.add_argument("--genes", type=int, default=3346)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--retain-freed-memory",
        action="store_true",
        help="attreg.retain_freed_cpu_memory() first (glibc keeps freed blocks for reuse)",
    )
    p.add_argument(
        "--no-attributionpriors", action="store_true", help="skip the TensorFlow reference peer"
    )
    p.add_argument(
        "--tf-rounds",
        type=int,
        default=3,
        help="attributionpriors: alternations of a TensorFlow worker process and attreg",
    )
    p.add_argument("--json", default=None)
    p.add_argument("--ap-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.retain_freed_memory:
        attreg.retain_freed_cpu_memory()
    adata, model, module, x, b, gt = _setup(args.cells, args.genes, args.batch)
    if args.ap_worker:  # TensorFlow alone in this process: print its medians as JSON
        medians = _attributionpriors_medians(module, x, b, gt, (1, 8), args.steps, args.threads)
        print(json.dumps(medians))
        return []
    rows = bench_eg(module, x, b, gt, (1, 8), args.steps)
    if not args.no_attributionpriors:
        worker_argv = [
            f"--cells={args.cells}",
            f"--genes={args.genes}",
            f"--batch={args.batch}",
            f"--steps={args.steps}",
            f"--threads={args.threads}",
        ] + (["--retain-freed-memory"] if args.retain_freed_memory else [])
        rows += bench_attributionpriors(
            module, x, b, gt, (1, 8), args.steps, args.threads, args.tf_rounds, worker_argv
        )
    rows += bench_ig(module, x, b, gt, args.steps)
    rows += bench_layer_ig(module, x, b, args.steps)
    print_table(
        f"CPU, torch {torch.__version__}, threads={args.threads}, batch={args.batch}, "
        f"{args.genes} genes; median of {args.steps} steps; ratio = peer / attreg "
        f"(attributionpriors: median, min and max over {args.tf_rounds} process rounds)",
        rows,
        [
            ("benchmark", "benchmark", "<17"),
            ("variant", "variant", "<58"),
            ("median_ms", "median ms", ">10.1f"),
            ("peer_over_attreg", "peer/attreg", ">12.2f"),
            ("ratio_min", "min", ">5.2f"),
            ("ratio_max", "max", ">5.2f"),
        ],
    )
    write_json(rows, args.json)
    return rows


if __name__ == "__main__":
    main()
