"""The PyTorch rows: the authors' network in eager mode vs LiteRT float.

Runs in its own worker process, with no Keras and no TensorFlow in it: the
network is `torch_reference.py` (an independent implementation, random
weights, eval mode, `torch.inference_mode`), the LiteRT model the float
MobileNetV2CA the TensorFlow worker converted, both at batch 1.
"""

from measure import interleaved
from measure import log
from measure import pair_row
from measure_keras import inputs
from measure_litert import litert_callables


def torch_section(args, part):
    """Rows per thread count, the network's parameters, torch's version.

    `part`: the TensorFlow worker's `litert_float_path` and the counts of
    MobileNetV2CA.
    """
    import torch

    import torch_reference as reference

    net = reference.randomized(
        reference.MobileNetV2CA(width_mult=args.alpha))
    x = torch.from_numpy(inputs(args, 1).transpose(0, 3, 1, 2).copy())
    with open(part["litert_float_path"], "rb") as f:
        blob = f.read()
    counts = {"pytorch_eager": part["counts"],
              "litert_float": part["counts"]}
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)

        def run_torch():
            with torch.inference_mode():
                net(x)

        fns = {"pytorch_eager": run_torch}
        fns.update({"litert_float": litert_callables(
            {"litert_float": blob}, threads)["litert_float"]})
        times, cpu = interleaved(fns, args.repeats, args.warmup)
        rows.append({"threads": threads, "batch": 1,
                     **pair_row(times, cpu, counts, 1,
                                "litert_float", "pytorch_eager")})
        log(f"torch {threads} thread(s): litert/torch "
            f"{rows[-1]['ratio']:.3f}")
    params = sum(p.numel() for p in net.parameters())
    return {"torch": rows, "torch_params": int(params),
            "torch_version": torch.__version__}
