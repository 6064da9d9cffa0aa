"""The project's prepared GPU check: one script, start to finish in well under 8 minutes.

Usage (on a machine with one or more GPUs; see bench/gpu_check.sh for the set-up):
    python bench/gpu_check.py [--out DIR] [--batch 64] [--seconds 6]
    python bench/gpu_check.py --smoke          # tiny sizes on the CPU: checks the script itself

Prints the device, then
 (a) plain mixed-precision inference throughput of resnet50, inception_v3 and efficientnet_lite0
     and the throughput of the scan's all-layers extraction (every paper probe + GAP in one pass)
     on the same device and batch size, and their ratio (goal >= 0.8);
 (b) fine-tuning step throughput, full vs pruned at the paper's cut, with AMP;
 (c) a 1-GPU DDP training smoke run (torchrun, 1 process) and a sharded scan smoke run (torchrun,
     one process per GPU), checked against a single-process scan;
 (d) the whole demo scan's wall time (efficientnet_lite0, ImageNet weights, demo-scale, both
     controls, no cache).
Writes gpu_check.json and gpu_check.txt into --out (default $OUT, else bench/out).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402

from rcvcore._extract import FeatureExtractor  # noqa: E402
from rcvcore.models import get_arch, resolve_backbone  # noqa: E402

LINES: list[str] = []


def say(msg: str) -> None:
    print(msg, flush=True)
    LINES.append(msg)


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _rate(fn, batch: int, seconds: float, dev) -> float:
    """Images/s of ``fn()`` over about ``seconds`` (after 3 warm-up calls)."""
    for _ in range(3):
        fn()
    _sync(dev)
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        if n % 5 == 0:
            _sync(dev)
            if time.perf_counter() - t0 >= seconds:
                break
    _sync(dev)
    return batch * n / (time.perf_counter() - t0)


def inference(arch: str, batch: int, seconds: float, dev, size: int | None) -> dict:
    spec = get_arch(arch)
    model = resolve_backbone(spec, "random").build()
    s = size or spec.input_size
    x = torch.randn(batch, 3, s, s, device=dev).contiguous(memory_format=torch.channels_last)
    amp = dev.type == "cuda"
    plain = model.to(dev).to(memory_format=torch.channels_last).eval()

    def fwd():
        with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.float16, enabled=amp):
            plain(x)

    ex = FeatureExtractor(model, spec, spec.layer_names, device=dev, channels_last=True, amp=amp)
    out = {"arch": arch, "batch": batch, "size": s, "amp": amp,
           "plain_img_s": _rate(fwd, batch, seconds, dev),
           "extract_img_s": _rate(lambda: ex(x), batch, seconds, dev),
           "layers": len(spec.layer_names)}
    out["ratio"] = out["extract_img_s"] / out["plain_img_s"]
    return out


def run(cmd: list[str], timeout: int) -> tuple[int, float, str]:
    t0 = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=f"{ROOT}:{os.environ.get('PYTHONPATH', '')}")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    return r.returncode, time.perf_counter() - t0, (r.stdout + r.stderr)[-1500:]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "bench" / "out"))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU")
    a = ap.parse_args()
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    smoke = a.smoke or not torch.cuda.is_available()
    dev = torch.device("cuda" if torch.cuda.is_available() and not a.smoke else "cpu")
    batch, seconds, size = (4, 1.0, 96) if smoke else (a.batch, a.seconds, None)
    ngpu = torch.cuda.device_count() if dev.type == "cuda" else 0
    report: dict = {"device": torch.cuda.get_device_name(0) if ngpu else platform.processor()
                    or "cpu", "n_gpus": ngpu, "torch": torch.__version__, "smoke": smoke,
                    "python": platform.python_version()}
    say(f"device: {report['device']} (GPUs: {ngpu}); torch {torch.__version__}; "
        f"{'SMOKE (CPU, tiny sizes)' if smoke else 'full'}")
    t_all = time.perf_counter()

    say("(a) inference, AMP fp16 on CUDA, channels_last: plain forward vs all-layers extraction")
    report["inference"] = []
    for arch in ("resnet50", "inception_v3", "efficientnet_lite0"):
        r = inference(arch, batch, seconds, dev, size)
        report["inference"].append(r)
        say(f"  {arch:<20} batch {r['batch']:>3} @{r['size']}: plain {r['plain_img_s']:8.1f} img/s,"
            f" {r['layers']} layers {r['extract_img_s']:8.1f} img/s, ratio {r['ratio']:.2f}")

    say("(b) fine-tuning step (Adam, MSE, AMP on CUDA): full vs pruned at the paper's cut")
    from bench_train import train_throughputs

    report["train"] = []
    for arch, cut in (("resnet50", "add_15"), ("inception_v3", "mixed8"),
                      ("efficientnet_lite0", "block5.3")):
        tb = max(2, batch // 2)
        r = train_throughputs(arch, ["none", cut], tb, 2 if smoke else 10, 1 if smoke else 3, dev)
        report["train"].append({"arch": arch, "cut": cut, "batch": tb, **r})
        say(f"  {arch:<20} batch {tb:>3}: full {r['none']:8.1f} img/s, pruned at {cut} "
            f"{r[cut]:8.1f} img/s ({r[cut] / r['none']:.2f}x)")

    say("(c) torchrun smoke runs")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    devflag = ["--device", "cuda" if ngpu else "cpu"]
    rc, secs, tail = run(torchrun + ["--nproc_per_node", "1", "-m", "rcvcore", "train",
                                     "--arch", "resnet18", "--weights", "random", "--cut", "add_6",
                                     "--dataset", "demo-histology", "--opt", "max_per_level=4",
                                     "--epochs", "1", "--image-size", "64", "--batch-size", "8",
                                     "--run-dir", str(tmp / "ddp_run"), "--quiet", *devflag], 300)
    report["ddp_train"] = {"rc": rc, "seconds": secs}
    say(f"  DDP training, 1 process: rc {rc}, {secs:.1f} s" + ("" if rc == 0 else "\n" + tail))
    scan = ["-m", "rcvcore", "scan", "--arch", "resnet18", "--weights", "random", "--dataset",
            "demo-scale", "--opt", "protocol=across-photos", "--n-images", "48",
            "--layers", "add_2,add_8,pre_softmax", "--repeats",
            "2", "--no-cache", "--quiet", "--cache-dir", str(tmp / "cache"), *devflag]
    procs = str(max(ngpu, 1) if ngpu else 2)
    rc1, s1, t1 = run([sys.executable, *scan, "--json", str(tmp / "single.json")], 300)
    rc2, s2, t2 = run(torchrun + ["--nproc_per_node", procs, *scan, "--json",
                                  str(tmp / "sharded.json")], 300)
    same = None
    if rc1 == 0 and rc2 == 0:
        one, many = (json.loads((tmp / f).read_text()) for f in ("single.json", "sharded.json"))
        same = max(abs(x - y) for p, q in zip(one["layers"], many["layers"])
                   for x, y in zip(p["r2"], q["r2"]))
        report["sharded_scan"] = {"procs": int(procs), "single_s": s1, "sharded_s": s2,
                                  "max_abs_r2_diff": same, "devices": many["timing"]["devices"],
                                  "extract_s": many["timing"]["extract_s"]}
    else:
        report["sharded_scan"] = {"rc_single": rc1, "rc_sharded": rc2}
    say(f"  sharded scan, {procs} processes: rc {rc2}, {s2:.1f} s (single process {s1:.1f} s); "
        f"max |R² difference| = {same}" + ("" if rc2 == 0 else "\n" + t2 + t1))

    say("(d) the whole demo scan (efficientnet_lite0, ImageNet, demo-scale, both controls)")
    demo = ["-m", "rcvcore", "scan", "--arch", "efficientnet_lite0", "--weights", "imagenet",
            "--dataset", "demo-scale", "--no-cache", "--quiet", "--cache-dir", str(tmp / "cache"),
            "--json", str(tmp / "demo.json"), *devflag] + (
                ["--opt", "protocol=across-photos", "--n-images", "32", "--repeats", "2"]
                if smoke else [])
    rc, secs, tail = run([sys.executable, *demo], 420)
    report["demo_scan"] = {"rc": rc, "seconds": secs}
    if rc == 0:
        d = json.loads((tmp / "demo.json").read_text())
        report["demo_scan"].update(n_images=d["n_images"], timing=d["timing"],
                                   suggested_cut=d.get("suggested_cut"))
    say(f"  demo scan: rc {rc}, {secs:.1f} s wall" + ("" if rc == 0 else "\n" + tail))
    report["total_s"] = time.perf_counter() - t_all
    say(f"total {report['total_s']:.1f} s")
    (out_dir / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    (out_dir / "gpu_check.txt").write_text("\n".join(LINES) + "\n")
    ok = report["ddp_train"]["rc"] == 0 and rc2 == 0 and rc == 0 and (same or 0) < 1e-4
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
