//! What a GPU execution provider needs: its shared libraries (found by absolute path and
//! preloaded before the provider is registered, so nothing has to be exported), the NVIDIA
//! driver, and a GPU. [`doctor`] reports all of it.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::native::{self, DriverInfo};
use crate::{Device, Error, Result};

/// Folder `just setup-gpu` fills: onnxruntime-gpu's libraries and the CUDA 13 / cuDNN 9
/// runtime libraries they need.
pub const GPU_LIBRARY_DIR: &str = ".ort-gpu";

/// Environment variable naming the folder of TensorRT 10's libraries (`--trt-lib-dir`).
pub const TRT_LIB_DIR_ENV: &str = "XFER_TRT_LIB_DIR";

/// The CUDA version the onnxruntime-gpu 1.31.1 wheel is built for, as the driver API writes it.
const CUDA_BUILD_VERSION: i32 = 13000;

/// Whether the onnxruntime-gpu 1.31.1 wheel's GPU code runs on this compute capability: it
/// carries SASS for sm_75, 80, 86, 89, 90a and 120a and no PTX (sm_80 code runs on any 8.x).
fn wheel_runs_on(major: i32, minor: i32) -> bool {
    major == 8 || matches!((major, minor), (7, 5) | (9, 0) | (12, 0))
}

/// A shared library an execution provider needs, and what provides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeededLibrary {
    /// File name (soname); a trailing `*` matches any suffix (`libnvrtc-builtins.so.13.*`).
    pub name: &'static str,
    /// The package or install that provides it.
    pub provided_by: &'static str,
    /// Where it is looked for.
    pub home: Home,
}

/// Where a needed library is looked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Home {
    /// Only next to the ONNX Runtime library (ONNX Runtime loads its providers from there).
    OrtDir,
    /// Next to the ONNX Runtime library (where `just setup-gpu` puts it), then the system.
    OrtDirThenSystem,
    /// `--trt-lib-dir` / `XFER_TRT_LIB_DIR`, then next to ONNX Runtime, then the system.
    TensorRt,
}

const fn ort_gpu(name: &'static str) -> NeededLibrary {
    NeededLibrary {
        name,
        provided_by: "onnxruntime-gpu 1.31.1 (`just setup-gpu`)",
        home: Home::OrtDir,
    }
}

const fn wheel(name: &'static str, provided_by: &'static str) -> NeededLibrary {
    NeededLibrary {
        name,
        provided_by,
        home: Home::OrtDirThenSystem,
    }
}

/// The CUDA provider's libraries, in the order they are preloaded (dependencies first).
const CUDA_LIBRARIES: &[NeededLibrary] = &[
    ort_gpu("libonnxruntime_providers_shared.so"),
    ort_gpu("libonnxruntime_providers_cuda.so"),
    wheel("libcudart.so.13", "pip wheel nvidia-cuda-runtime 13.x"),
    wheel("libcublasLt.so.13", "pip wheel nvidia-cublas 13.x"),
    wheel("libcublas.so.13", "pip wheel nvidia-cublas 13.x"),
    wheel("libcurand.so.10", "pip wheel nvidia-curand 10.x"),
    wheel("libcufft.so.12", "pip wheel nvidia-cufft 12.x"),
    wheel(
        "libnvrtc-builtins.so.13.*",
        "pip wheel nvidia-cuda-nvrtc 13.x",
    ),
    wheel("libnvrtc.so.13", "pip wheel nvidia-cuda-nvrtc 13.x"),
    wheel("libcudnn_graph.so.9", "pip wheel nvidia-cudnn-cu13 9.x"),
    wheel(
        "libcudnn_engines_precompiled.so.9",
        "pip wheel nvidia-cudnn-cu13 9.x",
    ),
    wheel(
        "libcudnn_engines_runtime_compiled.so.9",
        "pip wheel nvidia-cudnn-cu13 9.x",
    ),
    wheel("libcudnn_heuristic.so.9", "pip wheel nvidia-cudnn-cu13 9.x"),
    wheel("libcudnn_ops.so.9", "pip wheel nvidia-cudnn-cu13 9.x"),
    wheel("libcudnn_cnn.so.9", "pip wheel nvidia-cudnn-cu13 9.x"),
    wheel("libcudnn_adv.so.9", "pip wheel nvidia-cudnn-cu13 9.x"),
    wheel("libcudnn.so.9", "pip wheel nvidia-cudnn-cu13 9.x"),
];

const TENSORRT: &str = "TensorRT 10 for CUDA 13 (not on PyPI: install it from NVIDIA, then pass --trt-lib-dir DIR or set XFER_TRT_LIB_DIR)";

/// What the TensorRT provider needs beyond the CUDA libraries.
const TENSORRT_LIBRARIES: &[NeededLibrary] = &[
    ort_gpu("libonnxruntime_providers_tensorrt.so"),
    NeededLibrary {
        name: "libnvinfer.so.10",
        provided_by: TENSORRT,
        home: Home::TensorRt,
    },
    NeededLibrary {
        name: "libnvonnxparser.so.10",
        provided_by: TENSORRT,
        home: Home::TensorRt,
    },
];

/// What the OpenVINO provider needs next to onnxruntime-openvino's ONNX Runtime (which
/// loads them itself, through RPATH `$ORIGIN`).
const OPENVINO_LIBRARIES: &[NeededLibrary] = &[
    ort_openvino("libonnxruntime_providers_shared.so"),
    ort_openvino("libonnxruntime_providers_openvino.so"),
    ort_openvino("libopenvino.so.2541"),
    ort_openvino("libopenvino_onnx_frontend.so.2541"),
    ort_openvino("libopenvino_intel_cpu_plugin.so"),
    ort_openvino("libtbb.so.12"),
];

const fn ort_openvino(name: &'static str) -> NeededLibrary {
    NeededLibrary {
        name,
        provided_by: "onnxruntime-openvino 1.24.1 (`just setup-openvino`)",
        home: Home::OrtDir,
    }
}

/// Every library `device`'s provider needs (none for the CPU), in preload order.
pub fn needed_libraries(device: Device) -> Vec<NeededLibrary> {
    match device {
        Device::Cpu => Vec::new(),
        Device::OpenVino => OPENVINO_LIBRARIES.to_vec(),
        Device::Cuda => CUDA_LIBRARIES.to_vec(),
        Device::TensorRt => {
            let (providers, rest) = CUDA_LIBRARIES.split_at(2);
            let (trt_provider, trt) = TENSORRT_LIBRARIES.split_at(1);
            [providers, trt_provider, rest, trt].concat()
        }
    }
}

/// A needed library and where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibraryStatus {
    /// What is needed.
    pub library: NeededLibrary,
    /// Its absolute path, or `None` when it was not found.
    pub path: Option<PathBuf>,
    /// Why it was found but could not be loaded (see [`preload`]).
    pub load_error: Option<String>,
}

impl LibraryStatus {
    /// Found and, if [`preload`] ran, loaded.
    pub fn usable(&self) -> bool {
        self.path.is_some() && self.load_error.is_none()
    }
}

/// Loads every found library that xfer preloads (all but ONNX Runtime's own providers,
/// which ONNX Runtime loads itself and which link the driver) by absolute path, in order,
/// for the rest of the process; records in each status why it could not be loaded.
pub fn preload(libraries: &mut [LibraryStatus]) {
    for status in libraries.iter_mut() {
        if status.library.home == Home::OrtDir {
            continue;
        }
        if let Some(path) = &status.path {
            status.load_error = native::load_for_process(path).err();
            if status.load_error.is_none() {
                tracing::debug!(path = %path.display(), "preloaded");
            }
        }
    }
}

/// Finds every library `device` needs: next to `ort_lib`, in `trt_lib_dir` (TensorRT's own
/// libraries), then in `LD_LIBRARY_PATH` and the usual system folders.
pub fn locate_libraries(
    device: Device,
    ort_lib: &Path,
    trt_lib_dir: Option<&Path>,
) -> Vec<LibraryStatus> {
    let ort_dir = ort_lib.parent().map(Path::to_path_buf);
    let system = system_dirs();
    needed_libraries(device)
        .into_iter()
        .map(|library| {
            let mut dirs: Vec<PathBuf> = Vec::new();
            if library.home == Home::TensorRt {
                dirs.extend(trt_lib_dir.map(Path::to_path_buf));
            }
            dirs.extend(ort_dir.clone());
            if library.home != Home::OrtDir {
                dirs.extend(system.iter().cloned());
            }
            let path = dirs.iter().find_map(|d| find_in(d, library.name));
            LibraryStatus {
                library,
                path,
                load_error: None,
            }
        })
        .collect()
}

fn system_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("LD_LIBRARY_PATH")
        .map(|v| std::env::split_paths(&v).collect())
        .unwrap_or_default();
    dirs.extend(
        [
            "/usr/local/cuda/lib64",
            "/usr/local/cuda/targets/x86_64-linux/lib",
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib64",
            "/usr/local/lib",
            "/usr/lib",
        ]
        .map(PathBuf::from),
    );
    dirs
}

/// `dir/name`, or for a `prefix*` name the first matching file in `dir`, as an absolute path.
fn find_in(dir: &Path, name: &str) -> Option<PathBuf> {
    let found = match name.strip_suffix('*') {
        None => Some(dir.join(name)).filter(|p| p.is_file()),
        Some(prefix) => {
            let mut matches: Vec<PathBuf> = std::fs::read_dir(dir)
                .ok()?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with(prefix))
                })
                .collect();
            matches.sort();
            matches.into_iter().next()
        }
    }?;
    std::fs::canonicalize(&found).ok()
}

/// The NVIDIA driver as found in this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Driver {
    /// Where `libcuda.so.1` was loaded from.
    pub path: PathBuf,
    /// What it says about itself and its GPUs, or why it could not say.
    pub info: std::result::Result<DriverInfo, String>,
}

/// Loads the NVIDIA driver and asks it for its GPUs; `Err` with the loader's message when
/// there is no driver.
pub fn driver() -> std::result::Result<Driver, String> {
    let path = native::load_driver()?;
    Ok(Driver {
        path,
        info: native::driver_info(),
    })
}

fn no_driver(device: Device, loader: &str) -> String {
    format!(
        "no NVIDIA driver: {} could not be loaded ({loader}). This is a CPU-only machine (or its NVIDIA driver is not installed): use --device cpu (the default); --device {device} needs an NVIDIA GPU and its driver (one for CUDA 13.0 or newer: 580+)",
        native::DRIVER_SONAME
    )
}

/// Gets the process ready to register `device`'s provider: checks the driver and that the
/// ONNX Runtime library has the provider, finds every library the provider needs and
/// preloads each by absolute path (dependencies first). Errors say what is missing and what
/// provides it.
#[cfg_attr(
    not(any(feature = "cuda", feature = "tensorrt")),
    allow(dead_code, reason = "used where a GPU provider is built in")
)]
pub(crate) fn prepare(device: Device, ort_lib: &Path, trt_lib_dir: Option<&Path>) -> Result<()> {
    let unavailable = |reason: String| Error::DeviceUnavailable {
        device: device.to_string(),
        reason,
    };
    if device == Device::Cpu {
        return Ok(());
    }
    native::load_driver().map_err(|e| unavailable(no_driver(device, &e)))?;
    if let Some(problem) = provider_problem(device, ort_lib) {
        return Err(unavailable(problem));
    }
    let mut libraries = locate_libraries(device, ort_lib, trt_lib_dir);
    if libraries.iter().all(|s| s.path.is_some()) {
        preload(&mut libraries);
    }
    let unusable: Vec<String> = libraries
        .iter()
        .filter(|s| !s.usable())
        .map(|s| match (&s.path, &s.load_error) {
            (Some(p), Some(e)) => format!("{} could not be loaded ({e})", p.display()),
            _ => format!(
                "{} is missing (from {})",
                s.library.name, s.library.provided_by
            ),
        })
        .collect();
    if unusable.is_empty() {
        Ok(())
    } else {
        Err(unavailable(format!(
            "{}; `xfer doctor --device {device}` lists what is found where",
            unusable.join(", ")
        )))
    }
}

fn provider_name(device: Device) -> &'static str {
    match device {
        Device::Cpu => "CPUExecutionProvider",
        Device::Cuda => "CUDAExecutionProvider",
        Device::TensorRt => "TensorrtExecutionProvider",
        Device::OpenVino => crate::openvino::PROVIDER_NAME,
    }
}

/// Why the loaded ONNX Runtime cannot run `device`'s provider, if it cannot.
fn provider_problem(device: Device, ort_lib: &Path) -> Option<String> {
    if device == Device::OpenVino {
        return crate::openvino::provider_problem(ort_lib);
    }
    let providers = native::ort_providers().unwrap_or_default();
    let wanted = provider_name(device);
    (!providers.iter().any(|p| p == wanted)).then(|| {
        format!(
            "the ONNX Runtime library in use ({}) has no {wanted} (it has {}): it is a CPU build. Run `just setup-gpu` (it fills {GPU_LIBRARY_DIR}/, which --device {device} finds by itself) or pass --ort-lib pointing at onnxruntime-gpu's libonnxruntime.so",
            ort_lib.display(),
            providers.join(", ")
        )
    })
}

/// Everything `xfer doctor` reports.
#[derive(Debug, Clone)]
pub struct DoctorReport {
    /// Device asked about.
    pub device: Device,
    /// ONNX Runtime library in use.
    pub ort_lib: PathBuf,
    /// Its version, or why it could not be read.
    pub ort_version: std::result::Result<String, String>,
    /// Its execution providers.
    pub providers: Vec<String>,
    /// Whether this build of xfer can register the device's provider (cargo feature).
    pub built_with_provider: bool,
    /// The libraries the device's provider needs.
    pub libraries: Vec<LibraryStatus>,
    /// The driver (`None` for the CPU, where it is not needed).
    pub driver: Option<std::result::Result<Driver, String>>,
    /// What stops the device from working, each with what to do.
    pub problems: Vec<String>,
    /// What may not work, each with what to do.
    pub warnings: Vec<String>,
}

impl DoctorReport {
    /// Whether `device` can work here.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks everything `device` needs: loads ONNX Runtime (as a session would), lists its
/// version and providers, finds the provider's libraries and the driver.
pub fn doctor(
    device: Device,
    ort_lib: Option<&Path>,
    trt_lib_dir: Option<&Path>,
) -> Result<DoctorReport> {
    let ort_lib = crate::library::init_for(ort_lib, device)?.to_path_buf();
    let ort_version = native::ort_version(&ort_lib);
    let providers = native::ort_providers().unwrap_or_default();
    let mut libraries = locate_libraries(device, &ort_lib, trt_lib_dir);
    preload(&mut libraries);
    let driver = matches!(device, Device::Cuda | Device::TensorRt).then(driver);
    let mut report = DoctorReport {
        device,
        ort_lib,
        ort_version,
        providers,
        built_with_provider: crate::session::built_with(device),
        libraries,
        driver,
        problems: Vec::new(),
        warnings: Vec::new(),
    };
    diagnose(&mut report);
    Ok(report)
}

fn diagnose(r: &mut DoctorReport) {
    let device = r.device;
    if device == Device::Cpu {
        return;
    }
    if !r.built_with_provider {
        r.problems.push(format!(
            "this xfer was built without the `{device}` feature: run `just setup-gpu` (or `cargo build --release -p xfer-cli --features cuda,tensorrt`)"
        ));
    }
    if let Some(problem) = provider_problem(device, &r.ort_lib) {
        r.problems.push(problem);
    }
    let missing: Vec<&LibraryStatus> = r.libraries.iter().filter(|s| s.path.is_none()).collect();
    for s in r
        .libraries
        .iter()
        .filter(|s| s.path.is_some() && !s.usable())
    {
        r.problems.push(format!(
            "{} is there but could not be loaded: {}",
            s.library.name,
            s.load_error.as_deref().unwrap_or("")
        ));
    }
    if missing.iter().any(|s| s.library.home == Home::TensorRt) {
        r.problems.push(format!(
            "TensorRT 10 is missing: install TensorRT 10 for CUDA 13 (NVIDIA's tar or deb packages; PyPI's tensorrt-cu13-libs is only a stub), then pass --trt-lib-dir DIR or set {TRT_LIB_DIR_ENV}=DIR, DIR being the folder with libnvinfer.so.10"
        ));
    }
    if device == Device::OpenVino {
        if !missing.is_empty() {
            r.problems.push(format!(
                "OpenVINO's libraries are missing next to ONNX Runtime: run `just setup-openvino` (it fills {}/)",
                crate::OPENVINO_LIBRARY_DIR
            ));
        }
        let bf16 = crate::cpu_bf16();
        if !bf16.any() {
            r.warnings.push(
                "this CPU has neither AMX-BF16 nor AVX512-BF16: --device openvino runs fp32 only"
                    .to_owned(),
            );
        } else if !bf16.amx {
            r.warnings.push("this CPU has AVX512-BF16 but not AMX-BF16: --device openvino defaults to fp32 here; --precision bf16 runs, with a smaller gain".to_owned());
        }
    } else if missing.iter().any(|s| s.library.home != Home::TensorRt) {
        r.problems.push(format!(
            "CUDA libraries are missing: run `just setup-gpu` (it fetches them into {GPU_LIBRARY_DIR}/) or install CUDA 13 and cuDNN 9"
        ));
    }
    let (problems, warnings) = match &r.driver {
        Some(Err(e)) => (
            vec![format!(
                "{}; commands given --allow-cpu-fallback still run, on the CPU",
                no_driver(device, e)
            )],
            Vec::new(),
        ),
        Some(Ok(Driver { info: Err(e), .. })) => (
            vec![format!(
                "the NVIDIA driver is installed but reports no usable GPU: {e}"
            )],
            Vec::new(),
        ),
        Some(Ok(Driver { info: Ok(info), .. })) => check_driver(info),
        None => (Vec::new(), Vec::new()),
    };
    r.problems.extend(problems);
    r.warnings.extend(warnings);
}

/// Problems and warnings about the driver's CUDA version and its GPUs.
fn check_driver(info: &DriverInfo) -> (Vec<String>, Vec<String>) {
    let (mut problems, mut warnings) = (Vec::new(), Vec::new());
    if info.cuda_version < CUDA_BUILD_VERSION {
        problems.push(format!(
            "the NVIDIA driver supports CUDA {} but onnxruntime-gpu 1.31.1 is a CUDA 13.0 build: update the driver (580 or newer)",
            cuda_version_string(info.cuda_version)
        ));
    }
    if info.gpus.is_empty() {
        problems.push("the NVIDIA driver sees no GPU".to_owned());
    }
    for gpu in &info.gpus {
        let (major, minor) = gpu.compute_capability;
        if !wheel_runs_on(major, minor) {
            warnings.push(format!(
                "{} is compute capability {major}.{minor}; the onnxruntime-gpu 1.31.1 wheel carries GPU code only for 7.5, 8.x, 9.0 and 12.0 (no PTX), so its kernels may not run there",
                gpu.name
            ));
        }
    }
    (problems, warnings)
}

fn cuda_version_string(v: i32) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

impl fmt::Display for DoctorReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "ONNX Runtime library  {}", self.ort_lib.display())?;
        match &self.ort_version {
            Ok(v) => writeln!(f, "  version             {v}")?,
            Err(e) => writeln!(f, "  version             unknown ({e})")?,
        }
        writeln!(f, "  providers           {}", self.providers.join(", "))?;
        writeln!(f, "device                {}", self.device)?;
        if self.device != Device::Cpu {
            let built = if self.built_with_provider {
                "yes"
            } else {
                "no"
            };
            writeln!(f, "  built into xfer     {built}")?;
            writeln!(f, "libraries {} needs:", provider_name(self.device))?;
            for s in &self.libraries {
                match (&s.path, &s.load_error) {
                    (Some(p), None) => {
                        writeln!(f, "  found    {:<40} {}", s.library.name, p.display())?
                    }
                    (Some(p), Some(e)) => {
                        writeln!(f, "  BROKEN   {:<40} {} ({e})", s.library.name, p.display())?
                    }
                    (None, _) => writeln!(
                        f,
                        "  MISSING  {:<40} from {}",
                        s.library.name, s.library.provided_by
                    )?,
                }
            }
            if self.device == Device::OpenVino {
                let bf16 = crate::cpu_bf16();
                let yes = |b: bool| if b { "yes" } else { "no" };
                writeln!(
                    f,
                    "CPU bf16              AMX-BF16 {}, AVX512-BF16 {}",
                    yes(bf16.amx),
                    yes(bf16.avx512)
                )?;
            } else {
                write_driver(f, self.driver.as_ref())?;
            }
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        for p in &self.problems {
            writeln!(f, "problem: {p}")?;
        }
        if self.ok() {
            writeln!(f, "result: {} is ready", self.device)
        } else {
            writeln!(f, "result: {} cannot work here", self.device)
        }
    }
}

fn write_driver(
    f: &mut fmt::Formatter<'_>,
    driver: Option<&std::result::Result<Driver, String>>,
) -> fmt::Result {
    writeln!(f, "NVIDIA driver:")?;
    match driver {
        None => Ok(()),
        Some(Err(_)) => writeln!(
            f,
            "  MISSING  {:<40} from the NVIDIA driver (not fetchable)\nGPU                   none",
            native::DRIVER_SONAME
        ),
        Some(Ok(d)) => {
            writeln!(
                f,
                "  found    {:<40} {}",
                native::DRIVER_SONAME,
                d.path.display()
            )?;
            match &d.info {
                Err(e) => writeln!(f, "GPU                   unknown ({e})"),
                Ok(info) => {
                    writeln!(
                        f,
                        "  supports CUDA       {}",
                        cuda_version_string(info.cuda_version)
                    )?;
                    for (i, g) in info.gpus.iter().enumerate() {
                        writeln!(
                            f,
                            "GPU {i}                 {}, {:.1} GiB, compute capability {}.{}",
                            g.name,
                            g.memory_bytes as f64 / f64::from(1u32 << 30),
                            g.compute_capability.0,
                            g.compute_capability.1
                        )?;
                    }
                    Ok(())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensorrt_needs_the_cuda_libraries_too_and_the_cpu_none() {
        assert!(needed_libraries(Device::Cpu).is_empty());
        let cuda = needed_libraries(Device::Cuda);
        let trt = needed_libraries(Device::TensorRt);
        for l in &cuda {
            assert!(trt.contains(l), "{} missing for TensorRT", l.name);
        }
        assert!(trt.iter().any(|l| l.name == "libnvinfer.so.10"));
        // libcudnn.so.9 is preloaded after the sub-libraries it opens.
        let pos = |n: &str| cuda.iter().position(|l| l.name == n).expect(n);
        assert!(pos("libcudnn_ops.so.9") < pos("libcudnn.so.9"));
        assert!(pos("libcublasLt.so.13") < pos("libcublas.so.13"));
    }

    #[test]
    fn libraries_are_found_next_to_ort_and_in_the_tensorrt_folder() {
        let tmp = std::env::temp_dir().join(format!("xfer-gpu-locate-{}", std::process::id()));
        let ort = tmp.join("ort");
        let trt = tmp.join("trt");
        std::fs::create_dir_all(&ort).expect("mkdir");
        std::fs::create_dir_all(&trt).expect("mkdir");
        for l in needed_libraries(Device::TensorRt) {
            let name = l.name.replace('*', "0");
            let dir = if l.home == Home::TensorRt { &trt } else { &ort };
            std::fs::write(dir.join(name), b"").expect("touch");
        }
        let ort_lib = ort.join("libonnxruntime.so.1.31.1");
        let found = locate_libraries(Device::TensorRt, &ort_lib, Some(&trt));
        for s in &found {
            let path = s
                .path
                .as_ref()
                .unwrap_or_else(|| panic!("{} not found", s.library.name));
            assert!(path.is_absolute());
        }
        let nvinfer = found
            .iter()
            .find(|s| s.library.name == "libnvinfer.so.10")
            .and_then(|s| s.path.clone());
        assert_eq!(nvinfer, Some(trt.join("libnvinfer.so.10")));
        // Without the TensorRT folder TensorRT's libraries are missing (unless installed).
        let without = locate_libraries(Device::TensorRt, &ort_lib, None);
        let nvinfer = without
            .iter()
            .find(|s| s.library.name == "libnvinfer.so.10");
        assert!(nvinfer.is_some_and(|s| s.path.as_deref() != Some(&trt.join("libnvinfer.so.10"))));
        std::fs::remove_dir_all(&tmp).expect("cleanup");
    }
}
