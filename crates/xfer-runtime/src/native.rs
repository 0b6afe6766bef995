//! The few native calls xfer makes itself, each behind a safe function: loading a shared
//! library by absolute path for the rest of the process (the way onnxruntime's Python
//! package preloads the CUDA libraries), asking the NVIDIA driver about its GPUs, and asking
//! the loaded ONNX Runtime for its version and execution providers.
//!
//! Everything `unsafe` in xfer-runtime is in this module.
#![allow(unsafe_code)]

use std::ffi::{CStr, c_char, c_int, c_uint};
use std::path::{Path, PathBuf};

use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};

/// Loads `path` with `RTLD_NOW | RTLD_GLOBAL` and keeps it loaded until the process exits,
/// so that a later `dlopen` of the same soname (by ONNX Runtime or by a library it loads)
/// finds this copy. Returns the loader's message on failure.
pub(crate) fn load_for_process(path: &Path) -> Result<(), String> {
    // SAFETY: loading runs the library's initializers. The libraries loaded here are
    // NVIDIA's CUDA/cuDNN/TensorRT runtime libraries and the NVIDIA driver, whose
    // initializers only set up their own state; nothing here calls into them.
    let library = unsafe { Library::open(Some(path), RTLD_NOW | RTLD_GLOBAL) }.map_err(describe)?;
    // Never unloaded: ONNX Runtime and its providers hold pointers into it.
    let _ = library.into_raw();
    Ok(())
}

/// Loads the NVIDIA driver library by name (the system loader's search, as ONNX Runtime's
/// CUDA provider does) and returns its path, or the loader's message.
pub(crate) fn load_driver() -> Result<PathBuf, String> {
    // SAFETY: as in `load_for_process`; the driver's initializers only set up its state.
    let library =
        unsafe { Library::open(Some(DRIVER_SONAME), RTLD_NOW | RTLD_GLOBAL) }.map_err(describe)?;
    let _ = library.into_raw();
    Ok(mapped_path(DRIVER_SONAME).unwrap_or_else(|| PathBuf::from(DRIVER_SONAME)))
}

/// The loader's own message (libloading's error only says "dlopen failed" and keeps the
/// loader's words as its source).
fn describe(e: libloading::Error) -> String {
    match std::error::Error::source(&e) {
        Some(source) => source.to_string(),
        None => e.to_string(),
    }
}

/// File name of the NVIDIA driver's CUDA library.
pub(crate) const DRIVER_SONAME: &str = "libcuda.so.1";

/// Where a library whose file name starts with `prefix` is mapped in this process.
fn mapped_path(prefix: &str) -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| {
            Path::new(path)
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix.trim_end_matches(".1")))
        })
        .map(PathBuf::from)
}

/// One GPU as the driver reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpu {
    /// Device name, e.g. "NVIDIA H200".
    pub name: String,
    /// Total device memory in bytes.
    pub memory_bytes: u64,
    /// Compute capability (major, minor).
    pub compute_capability: (i32, i32),
}

/// What the NVIDIA driver says about itself and its GPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverInfo {
    /// Highest CUDA version the driver supports, e.g. 13000 for 13.0.
    pub cuda_version: i32,
    /// Every GPU it sees.
    pub gpus: Vec<Gpu>,
}

type CuResult = c_int;
type CuInit = unsafe extern "C" fn(c_uint) -> CuResult;
type CuIntOut = unsafe extern "C" fn(*mut c_int) -> CuResult;
type CuDeviceGet = unsafe extern "C" fn(*mut c_int, c_int) -> CuResult;
type CuDeviceGetName = unsafe extern "C" fn(*mut c_char, c_int, c_int) -> CuResult;
type CuDeviceTotalMem = unsafe extern "C" fn(*mut usize, c_int) -> CuResult;
type CuDeviceGetAttribute = unsafe extern "C" fn(*mut c_int, c_int, c_int) -> CuResult;

const CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: c_int = 75;
const CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: c_int = 76;

/// Asks the driver (already loaded by [`load_driver`]) for its CUDA version and GPUs.
pub(crate) fn driver_info() -> Result<DriverInfo, String> {
    // SAFETY: opening an already loaded library only takes a reference to it.
    let lib = unsafe { Library::open(Some(DRIVER_SONAME), RTLD_NOW) }.map_err(|e| e.to_string())?;
    // SAFETY: each symbol is looked up with the signature of the CUDA driver API
    // (cuda.h, CUDA 12/13: CUresult is an int enum, CUdevice an int, size_t a usize).
    let (init, version, count, get, name, mem, attr) = unsafe {
        (
            lib.get::<CuInit>(b"cuInit").map_err(|e| e.to_string())?,
            lib.get::<CuIntOut>(b"cuDriverGetVersion")
                .map_err(|e| e.to_string())?,
            lib.get::<CuIntOut>(b"cuDeviceGetCount")
                .map_err(|e| e.to_string())?,
            lib.get::<CuDeviceGet>(b"cuDeviceGet")
                .map_err(|e| e.to_string())?,
            lib.get::<CuDeviceGetName>(b"cuDeviceGetName")
                .map_err(|e| e.to_string())?,
            lib.get::<CuDeviceTotalMem>(b"cuDeviceTotalMem_v2")
                .map_err(|e| e.to_string())?,
            lib.get::<CuDeviceGetAttribute>(b"cuDeviceGetAttribute")
                .map_err(|e| e.to_string())?,
        )
    };
    let check = |what: &str, code: CuResult| {
        if code == 0 {
            Ok(())
        } else {
            Err(format!("{what} failed with CUDA error {code}"))
        }
    };
    let mut cuda_version: c_int = 0;
    // SAFETY: the out-pointers point to live locals of the types the API writes.
    unsafe {
        check("cuDriverGetVersion", version(&mut cuda_version))?;
        check("cuInit", init(0))?;
    }
    let mut n: c_int = 0;
    // SAFETY: as above.
    unsafe { check("cuDeviceGetCount", count(&mut n))? };
    let mut gpus = Vec::new();
    for ordinal in 0..n {
        let mut device: c_int = 0;
        let mut buf = [0 as c_char; 256];
        let mut bytes: usize = 0;
        let (mut major, mut minor): (c_int, c_int) = (0, 0);
        // SAFETY: out-pointers to live locals; the name buffer's length is passed with it
        // and the driver NUL-terminates what it writes.
        let name = unsafe {
            check("cuDeviceGet", get(&mut device, ordinal))?;
            check("cuDeviceGetName", name(buf.as_mut_ptr(), 255, device))?;
            check("cuDeviceTotalMem", mem(&mut bytes, device))?;
            check(
                "cuDeviceGetAttribute",
                attr(
                    &mut major,
                    CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
                    device,
                ),
            )?;
            check(
                "cuDeviceGetAttribute",
                attr(
                    &mut minor,
                    CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
                    device,
                ),
            )?;
            CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned()
        };
        gpus.push(Gpu {
            name,
            memory_bytes: bytes as u64,
            compute_capability: (major, minor),
        });
    }
    Ok(DriverInfo { cuda_version, gpus })
}

/// The version string of the ONNX Runtime library at `path` (already loaded by `ort`).
pub(crate) fn ort_version(path: &Path) -> Result<String, String> {
    // SAFETY: the library is ONNX Runtime, already loaded and initialized by `ort`; opening
    // it again only takes a reference.
    let lib = unsafe { Library::open(Some(path), RTLD_NOW) }.map_err(|e| e.to_string())?;
    // SAFETY: `OrtGetApiBase` has this signature in every ONNX Runtime release; the base
    // it returns is static, and `GetVersionString` returns a static NUL-terminated string.
    unsafe {
        let get_base = lib
            .get::<unsafe extern "C" fn() -> *const ort::sys::OrtApiBase>(b"OrtGetApiBase")
            .map_err(|e| e.to_string())?;
        let base = get_base();
        if base.is_null() {
            return Err("OrtGetApiBase returned null".to_owned());
        }
        let version = ((*base).GetVersionString)();
        if version.is_null() {
            return Err("GetVersionString returned null".to_owned());
        }
        Ok(CStr::from_ptr(version).to_string_lossy().into_owned())
    }
}

/// The execution providers the loaded ONNX Runtime was built with.
pub(crate) fn ort_providers() -> Result<Vec<String>, String> {
    let api = ort::api();
    let mut list: *mut *mut c_char = std::ptr::null_mut();
    let mut n: c_int = 0;
    // SAFETY: the OrtApi functions are called as documented in onnxruntime_c_api.h: the
    // list is read while alive, then released with its own length; a returned status is
    // read and released.
    unsafe {
        let status = (api.GetAvailableProviders)(&mut list, &mut n);
        if !status.0.is_null() {
            let message = CStr::from_ptr((api.GetErrorMessage)(status.0))
                .to_string_lossy()
                .into_owned();
            (api.ReleaseStatus)(status.0);
            return Err(message);
        }
        let count = usize::try_from(n).unwrap_or(0);
        let mut names = Vec::with_capacity(count);
        for i in 0..count {
            let p = *list.add(i);
            if !p.is_null() {
                names.push(CStr::from_ptr(p).to_string_lossy().into_owned());
            }
        }
        let status = (api.ReleaseAvailableProviders)(list, n);
        if !status.0.is_null() {
            (api.ReleaseStatus)(status.0);
        }
        Ok(names)
    }
}

/// Registers on `env` a CPU arena allocator that grows by exactly what each allocation asks
/// for (`arena_extend_strategy` = kSameAsRequested) instead of doubling, for the sessions that
/// opt in with `session.use_env_allocators` (see [`crate::CpuArena::Exact`]).
pub(crate) fn register_exact_cpu_arena(env: &ort::environment::Environment) -> Result<(), String> {
    use ort::AsPointer;
    let api = ort::api();
    let keys = [c"arena_extend_strategy".as_ptr()];
    let values: [usize; 1] = [1];
    let mut cfg: *mut ort::sys::OrtArenaCfg = std::ptr::null_mut();
    let mut info: *mut ort::sys::OrtMemoryInfo = std::ptr::null_mut();
    // SAFETY: the OrtApi functions are called as documented in onnxruntime_c_api.h: the key
    // and value arrays live across the call and have the length passed; the out-pointers are
    // live locals; the config and memory info are released after registration (the
    // environment keeps its own copies); every returned status is read and released.
    unsafe {
        status((api.CreateArenaCfgV2)(
            keys.as_ptr(),
            values.as_ptr(),
            1,
            &mut cfg,
        ))?;
        let made = status((api.CreateCpuMemoryInfo)(
            ort::sys::OrtAllocatorType::OrtArenaAllocator,
            ort::sys::OrtMemType::OrtMemTypeDefault,
            &mut info,
        ));
        let registered = made.and_then(|()| {
            status((api.CreateAndRegisterAllocator)(
                env.ptr().cast_mut(),
                info,
                cfg,
            ))
        });
        if !info.is_null() {
            (api.ReleaseMemoryInfo)(info);
        }
        (api.ReleaseArenaCfg)(cfg);
        registered
    }
}

/// `Ok` for a null status, else the status's message (the status is released).
///
/// # Safety
/// `s` is a status returned by an OrtApi call, not yet released.
unsafe fn status(s: ort::sys::OrtStatusPtr) -> Result<(), String> {
    if s.0.is_null() {
        return Ok(());
    }
    let api = ort::api();
    // SAFETY: a non-null status from the API; its message lives until it is released.
    unsafe {
        let message = CStr::from_ptr((api.GetErrorMessage)(s.0))
            .to_string_lossy()
            .into_owned();
        (api.ReleaseStatus)(s.0);
        Err(message)
    }
}
