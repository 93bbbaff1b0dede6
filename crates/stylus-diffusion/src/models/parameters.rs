//! Enumerating a model's parameters by path, for LoRA name tables and load checks.
//!
//! [`parameters`] walks any burn module with a [`ModuleVisitor`] and returns, for every float
//! parameter, its module path as burn sees it (`down_blocks.0.attentions.0.norm.gamma`), the
//! diffusers/PyTorch key of the same tensor (`...norm.weight`), the type of the module that owns
//! it (`Linear`, `Conv2d`, `GroupNorm`, `LayerNorm`, `Embedding`) and its shape **in burn
//! layout** (a `Linear` weight is `[in, out]`, the transpose of PyTorch's `[out, in]`; conv
//! weights are `[out, in, kh, kw]` as in PyTorch). Paths are the ones a path-tracking
//! [`burn::module::ModuleMapper`] sees, so a merge can find a parameter by the `path` returned
//! here (kohya LoRA names are `lora_unet_` + the diffusers module path with `.` -> `_`).
//! Shapes come from the lazy parameter metadata: enumerating never materializes weights.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor};

use crate::checkpoint::report::pytorch_name;

/// One float parameter of a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParameterInfo {
    /// Path as burn names it (`...to_q.weight`, `...norm1.gamma`).
    pub path: String,
    /// The diffusers/transformers key of the same tensor (`...norm1.weight`).
    pub diffusers_key: String,
    /// Type of the owning module: `Linear`, `Conv2d`, `GroupNorm`, `LayerNorm`, `Embedding`.
    pub module_type: String,
    /// Shape in burn layout (`Linear` weight `[in, out]`).
    pub shape: Vec<usize>,
}

/// Every float parameter of `module`, in visiting order.
pub fn parameters<B: Backend, M: Module<B>>(module: &M) -> Vec<ParameterInfo> {
    let mut visitor = ParameterCollector {
        path: Vec::new(),
        containers: Vec::new(),
        found: Vec::new(),
    };
    module.visit(&mut visitor);
    visitor.found
}

struct ParameterCollector {
    path: Vec<String>,
    containers: Vec<String>,
    found: Vec<ParameterInfo>,
}

impl<B: Backend> ModuleVisitor<B> for ParameterCollector {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.push(name.to_string());
        self.containers.push(container_type.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
        self.containers.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let path = self.path.join(".");
        let module_type = self
            .containers
            .iter()
            .rev()
            .find_map(|c| c.strip_prefix("Struct:"))
            .unwrap_or_default()
            .to_string();
        self.found.push(ParameterInfo {
            diffusers_key: pytorch_name(&path),
            path,
            module_type,
            shape: param.lazy_shape().to_vec(),
        });
    }

    fn visit_int<const D: usize>(&mut self, _param: &Param<Tensor<B, D, Int>>) {}

    fn visit_bool<const D: usize>(&mut self, _param: &Param<Tensor<B, D, Bool>>) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{CpuBackend, cpu_device};
    use crate::models::unet::UNetConfig;

    #[test]
    fn unet_parameters_have_diffusers_keys_and_burn_shapes() {
        let unet = UNetConfig::tiny().init::<CpuBackend>(&cpu_device());
        let params = parameters::<CpuBackend, _>(&unet);
        let to_k = params
            .iter()
            .find(|p| p.path == "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight")
            .unwrap();
        assert_eq!(to_k.module_type, "Linear");
        assert_eq!(to_k.shape, vec![32, 32]);
        let norm = params
            .iter()
            .find(|p| p.path == "down_blocks.0.resnets.0.norm1.gamma")
            .unwrap();
        assert_eq!(norm.diffusers_key, "down_blocks.0.resnets.0.norm1.weight");
        assert_eq!(norm.module_type, "GroupNorm");
        assert!(params.iter().any(
            |p| p.path == "up_blocks.1.attentions.0.transformer_blocks.0.ff.net.0.proj.weight"
        ));
        assert!(
            params
                .iter()
                .any(|p| p.path
                    == "up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0.bias")
        );
    }
}
