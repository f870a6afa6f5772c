//! Where tensors come from: memory-mapped safetensors (one file or shards) or a GGUF file
//! (dequantized on load, or, with `keep_quantized`, its block-quantized tensors handed
//! out as [`QTensor`]s by [`Weights::get_quantized`]). The model asks for tensors by their
//! Hugging Face names and the shape its config implies; every mismatch is an error naming
//! the tensor and both shapes. llama.cpp's rotary permutation of q/k rows is undone in
//! either form (on quantized data by moving whole rows of blocks).

use crate::{ModelError, Result};
use candle_core::quantized::{gguf_file, GgmlDType, QStorage, QTensor};
use candle_core::{DType, Device, Tensor};
use std::borrow::Cow;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A source of named tensors.
pub enum Weights {
    /// Safetensors files, memory-mapped.
    Safetensors(candle_core::safetensors::MmapedSafetensors),
    /// A GGUF file: its parsed header and an open handle for reading tensor data.
    Gguf {
        /// Parsed header (metadata and tensor index).
        content: gguf_file::Content,
        /// The file, for reading tensors.
        file: Mutex<File>,
        /// Path, for messages.
        path: PathBuf,
        /// Undo llama.cpp's interleaved rotary permutation of q/k rows (llama-arch files).
        unpermute_qk: bool,
        /// Query heads, for the un-permutation.
        num_heads: usize,
        /// Key/value heads, for the un-permutation.
        num_kv_heads: usize,
        /// Hand out block-quantized tensors as they are ([`Weights::get_quantized`]).
        keep_quantized: bool,
    },
}

impl Weights {
    /// Memory-maps safetensors files (a single file or all shards).
    pub fn from_safetensors(paths: &[PathBuf]) -> Result<Self> {
        for p in paths {
            if !p.exists() {
                return Err(ModelError::Missing(format!("weights file {}", p.display())));
            }
        }
        // SAFETY: the files are mapped read-only; like every mmap-based loader we rely on
        // them not being truncated while the model is loaded.
        let st = unsafe { candle_core::safetensors::MmapedSafetensors::multi(paths) }?;
        Ok(Self::Safetensors(st))
    }

    /// True if a tensor of this Hugging Face name exists.
    pub fn contains(&self, hf_name: &str) -> bool {
        match self {
            Self::Safetensors(st) => st.get(hf_name).is_ok(),
            Self::Gguf { content, .. } => gguf_name(hf_name)
                .map(|n| content.tensor_infos.contains_key(&n))
                .unwrap_or(false),
        }
    }

    /// Loads `hf_name`, checks it has `shape`, and converts it to `dtype` on `device`.
    pub fn get(
        &self,
        hf_name: &str,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let t = match self {
            Self::Safetensors(st) => {
                let view = st.get(hf_name).map_err(|_| {
                    ModelError::Missing(format!("tensor {hf_name} in the safetensors files"))
                })?;
                check_shape(hf_name, shape, view.shape())?;
                st.load(hf_name, &Device::Cpu)?
            }
            Self::Gguf { .. } => {
                let q = self.read_gguf(hf_name, shape)?;
                let t = q.dequantize(&Device::Cpu)?;
                match self.rotary_heads(hf_name) {
                    Some(h) => unpermute_rotary_rows(&t, h)?,
                    None => t,
                }
            }
        };
        Ok(t.to_dtype(dtype)?.to_device(device)?)
    }

    /// `hf_name` as a [`QTensor`] of its GGUF block type on `device`, if this is a GGUF
    /// file opened with `keep_quantized` and the tensor is block-quantized (not F32, F16
    /// or BF16); `None` otherwise (load it with [`Weights::get`]).
    pub fn get_quantized(
        &self,
        hf_name: &str,
        shape: &[usize],
        device: &Device,
    ) -> Result<Option<QTensor>> {
        let Self::Gguf {
            keep_quantized: true,
            ..
        } = self
        else {
            return Ok(None);
        };
        let q = self.read_gguf(hf_name, shape)?;
        if matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) {
            return Ok(None);
        }
        let data = match self.rotary_heads(hf_name) {
            Some(h) => Cow::Owned(unpermute_rotary_rows_raw(&q, h)?),
            None => q.data()?,
        };
        let storage = QStorage::from_data(data, device, q.dtype())?;
        Ok(Some(QTensor::new(storage, q.shape().clone())?))
    }

    /// Reads GGUF tensor `hf_name` (on the CPU, in its file type), checking its shape.
    fn read_gguf(&self, hf_name: &str, shape: &[usize]) -> Result<QTensor> {
        let Self::Gguf {
            content,
            file,
            path,
            ..
        } = self
        else {
            return Err(ModelError::invalid(hf_name, "not a GGUF tensor"));
        };
        let name = gguf_name(hf_name)
            .ok_or_else(|| ModelError::Missing(format!("GGUF name for tensor {hf_name}")))?;
        let info = content.tensor_infos.get(&name).ok_or_else(|| {
            ModelError::Missing(format!("tensor {name} ({hf_name}) in {}", path.display()))
        })?;
        check_shape(&name, shape, info.shape.dims())?;
        let mut f = file
            .lock()
            .map_err(|_| ModelError::Missing("GGUF file handle".into()))?;
        Ok(content.tensor(&mut *f, &name, &Device::Cpu)?)
    }

    /// The number of rotary heads whose rows llama.cpp permuted in `hf_name`, if any.
    fn rotary_heads(&self, hf_name: &str) -> Option<usize> {
        let Self::Gguf {
            unpermute_qk: true,
            num_heads,
            num_kv_heads,
            ..
        } = self
        else {
            return None;
        };
        if hf_name.ends_with("q_proj.weight") {
            Some(*num_heads)
        } else if hf_name.ends_with("k_proj.weight") {
            Some(*num_kv_heads)
        } else {
            None
        }
    }

    /// Opens a GGUF file and reads its header.
    pub fn open_gguf(path: &Path) -> Result<(gguf_file::Content, File)> {
        let mut file = File::open(path).map_err(|source| ModelError::Io {
            what: "GGUF file".into(),
            path: path.to_path_buf(),
            source,
        })?;
        let content = gguf_file::Content::read(&mut file).map_err(|e| {
            ModelError::invalid(format!("GGUF file {}", path.display()), e.to_string())
        })?;
        Ok((content, file))
    }
}

fn check_shape(name: &str, expected: &[usize], actual: &[usize]) -> Result<()> {
    if expected != actual {
        return Err(ModelError::ShapeMismatch {
            name: name.to_string(),
            expected: expected.to_vec(),
            actual: actual.to_vec(),
        });
    }
    Ok(())
}

/// Maps a Hugging Face tensor name to llama.cpp's GGUF name.
pub fn gguf_name(hf_name: &str) -> Option<String> {
    let fixed = match hf_name {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(n) = fixed {
        return Some(n.to_string());
    }
    let rest = hf_name.strip_prefix("model.layers.")?;
    let (layer, suffix) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let part = match suffix {
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "self_attn.q_norm.weight" => "attn_q_norm.weight",
        "self_attn.k_norm.weight" => "attn_k_norm.weight",
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return None,
    };
    Some(format!("blk.{layer}.{part}"))
}

/// llama.cpp's converter reorders each head's q/k rows from rotate-half order
/// (first half, second half) to interleaved pairs. This puts them back:
/// rows viewed as [heads, head_dim/2, 2, in] are transposed to [heads, 2, head_dim/2, in].
pub fn unpermute_rotary_rows(w: &Tensor, num_heads: usize) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    if num_heads == 0 || out % (2 * num_heads) != 0 {
        return Err(ModelError::invalid(
            "q/k projection",
            format!("{out} rows cannot be split into {num_heads} rotary heads"),
        ));
    }
    let half = out / num_heads / 2;
    Ok(w.reshape((num_heads, half, 2, inp))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inp))?)
}

/// [`unpermute_rotary_rows`] on the raw bytes of a `[out, in]` quantized tensor: each row
/// is a whole number of blocks, so rows move as byte ranges.
fn unpermute_rotary_rows_raw(q: &QTensor, num_heads: usize) -> Result<Vec<u8>> {
    let (out, _) = q.shape().dims2()?;
    if num_heads == 0 || out % (2 * num_heads) != 0 {
        return Err(ModelError::invalid(
            "q/k projection",
            format!("{out} rows cannot be split into {num_heads} rotary heads"),
        ));
    }
    let data = q.data()?;
    let row = data.len() / out;
    let half = out / num_heads / 2;
    let mut dst = Vec::with_capacity(data.len());
    for h in 0..num_heads {
        for j in 0..2 {
            for i in 0..half {
                let src = h * 2 * half + i * 2 + j;
                dst.extend_from_slice(&data[src * row..(src + 1) * row]);
            }
        }
    }
    Ok(dst)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mirror of llama.cpp's permutation, to check that ours inverts it.
    fn permute(w: &Tensor, heads: usize) -> Tensor {
        let (out, inp) = w.dims2().unwrap();
        w.reshape((heads, 2, out / heads / 2, inp))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((out, inp))
            .unwrap()
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() {
        let w = Tensor::arange(0f32, 3.0 * 8.0 * 5.0, &Device::Cpu)
            .unwrap()
            .reshape((24, 5))
            .unwrap();
        let back = unpermute_rotary_rows(&permute(&w, 3), 3).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
        assert!(unpermute_rotary_rows(&w, 5).is_err());
    }

    #[test]
    fn raw_unpermute_moves_quantized_rows_like_the_dense_one() {
        let w = Tensor::randn(0f32, 1.0, (24, 64), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let raw = unpermute_rotary_rows_raw(&q, 3).unwrap();
        let storage = QStorage::from_data(Cow::Owned(raw), &Device::Cpu, q.dtype()).unwrap();
        let moved = QTensor::new(storage, (24, 64)).unwrap();
        let dense = unpermute_rotary_rows(&q.dequantize(&Device::Cpu).unwrap(), 3).unwrap();
        let got = moved.dequantize(&Device::Cpu).unwrap();
        assert_eq!(
            got.to_vec2::<f32>().unwrap(),
            dense.to_vec2::<f32>().unwrap()
        );
        assert!(unpermute_rotary_rows_raw(&q, 5).is_err());
    }

    #[test]
    fn gguf_names() {
        assert_eq!(
            gguf_name("model.layers.12.mlp.up_proj.weight").unwrap(),
            "blk.12.ffn_up.weight"
        );
        assert_eq!(gguf_name("lm_head.weight").unwrap(), "output.weight");
        assert!(gguf_name("model.layers.x.mlp.up_proj.weight").is_none());
    }
}
