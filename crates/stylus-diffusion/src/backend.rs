//! Compute backends and device selection.
//!
//! Every network in [`crate::models`] is generic over a burn [`Backend`]; this module names the
//! concrete backends the workspace builds and turns "run on the GPU" into a device or a typed
//! [`StylusError::Device`].
//!
//! - CPU: [`CpuBackend`] = burn-flex `Flex<f32>`. Measured against burn-ndarray on this
//!   project's 2-core machine (docs/benchmarks.md, "SD 1.5 networks on CPU"): a 3x3 convolution
//!   2x320x64x64 -> 320 took 0.73 s on flex and 165 s on ndarray, a [2,4096,320]x[320,320] matmul
//!   56 ms vs 135 ms. flex also has f16/bf16 tensors (ndarray is f32/f64 only) and is the CPU
//!   backend burn maintains, so it is the only CPU backend compiled in.
//! - CUDA (feature `cuda`): [`CudaBackend`], created with [`cuda_device`].
//! - wgpu (feature `wgpu`): [`WgpuBackend`], created with [`wgpu_device`].
//!
//! GPU runtimes panic when no driver or adapter exists (cudarc fails to load libcuda; wgpu raises
//! `AdapterUnavailable`). The device helpers run one tiny tensor operation inside
//! [`std::panic::catch_unwind`] so that a machine without a GPU gets an error, not a crash.

use burn::tensor::ElementConversion as _;
use burn::tensor::backend::Backend;
use stylus_core::{Result, StylusError};

/// The CPU backend used by tests, benches and CPU inference: burn-flex with f32 as default float.
pub type CpuBackend = burn::backend::Flex<f32>;

/// The CPU device (burn-flex has exactly one).
pub fn cpu_device() -> burn::tensor::Device<CpuBackend> {
    Default::default()
}

/// The CUDA backend (fused, autotuned), f32 default float.
#[cfg(feature = "cuda")]
pub type CudaBackend = burn::backend::Cuda<f32>;

/// The CUDA device number `index`, checked by running one small operation on it.
///
/// Returns [`StylusError::Device`] when no CUDA driver or no such GPU exists.
#[cfg(feature = "cuda")]
pub fn cuda_device(index: usize) -> Result<burn::tensor::Device<CudaBackend>> {
    let device = burn::backend::cuda::CudaDevice::new(index);
    probe_device::<CudaBackend>(&device, &format!("CUDA device {index}"))?;
    Ok(device)
}

/// The wgpu backend (fused, autotuned), f32 default float.
#[cfg(feature = "wgpu")]
pub type WgpuBackend = burn::backend::Wgpu<f32>;

/// The best wgpu adapter on this machine, checked by running one small operation on it.
///
/// Returns [`StylusError::Device`] when wgpu finds no adapter.
#[cfg(feature = "wgpu")]
pub fn wgpu_device() -> Result<burn::tensor::Device<WgpuBackend>> {
    let device = burn::backend::wgpu::WgpuDevice::DefaultDevice;
    probe_device::<WgpuBackend>(&device, "wgpu default adapter")?;
    Ok(device)
}

/// Runs a tiny computation on `device` and reads it back; a panic inside the runtime (no driver,
/// no adapter) becomes [`StylusError::Device`] naming `what`.
pub fn probe_device<B: Backend>(device: &B::Device, what: &str) -> Result<()> {
    let device = device.clone();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let ones = burn::tensor::Tensor::<B, 1>::ones([4], &device);
        ones.sum().into_scalar().elem::<f32>()
    }));
    match outcome {
        Ok(sum) => {
            if sum == 4.0 {
                Ok(())
            } else {
                Err(StylusError::Device(format!(
                    "{what}: probe computation returned {sum} instead of 4"
                )))
            }
        }
        Err(panic) => Err(StylusError::Device(format!(
            "{what}: {}",
            panic_message(panic.as_ref())
        ))),
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "the runtime panicked while creating the device".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_device_passes_probe() {
        probe_device::<CpuBackend>(&cpu_device(), "flex CPU").unwrap();
    }
}
