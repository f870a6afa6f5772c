//! [`StepGraph`]: a step of device work captured once and replayed, so that a decode step
//! costs one launch instead of hundreds (CUDA graphs).
//!
//! A graph replays the kernels it recorded with the arguments they had: the same buffers,
//! the same launch shapes, the same host-side choices. So a step can be replayed only over
//! inputs that live in the memory the captured step read, with the same sizes (the caller's
//! job: wick-models' `ModelInput::build_padded` lays every decode step of one shape out
//! that way), and its result is written into memory the graph owns: [`StepGraph::output`],
//! rewritten by each replay.
//!
//! On CUDA ([`StepGraph::capture`]): the step runs once eagerly (loading every kernel
//! module and cuBLAS workspace it needs, and giving the caller this step's result), then
//! once under stream capture into a graph that also copies the result into the output
//! tensor allocated before capture; every other allocation the captured step makes is freed
//! within it, so the graph's own memory is private to it and reused by each replay.
//! [`StepGraph::replay`] launches the graph on the device's stream.
//!
//! On the CPU, the twin that tests run: capture runs the step once and keeps its output
//! memory; replay runs the step again and copies its result into that same memory. Both
//! devices thus share the callers' whole path (padding, shapes, the same memory, the
//! result's rows), and CUDA differs only in how the same work is launched.

use candle_core::{Device, Result, Tensor};

/// One captured step (see the module docs).
pub struct StepGraph {
    /// Persistent memory of the step's result, rewritten by every replay.
    output: Tensor,
    #[cfg(feature = "cuda")]
    cuda: Option<crate::cuda::graph::Captured>,
}

impl std::fmt::Debug for StepGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepGraph")
            .field("output", &self.output.shape())
            .finish()
    }
}

impl StepGraph {
    /// Captures `step` on `device` (see the module docs): `step` runs eagerly once, its
    /// result is returned (this step's result), and on CUDA it runs a second time under
    /// capture (recorded, not executed), so it must do the same device work each time it is
    /// called and nothing else on the device may run meanwhile. Work it does on the host
    /// (checks, reading its input's host copies) is not replayed: the caller repeats the
    /// checks before each [`Self::replay`]. Replays write the result into `output` when
    /// given (memory that graphs never replayed at once may share: results of one shape),
    /// else into memory allocated here; errors if `output` differs from the result in shape
    /// or dtype.
    pub fn capture(
        device: &Device,
        output: Option<Tensor>,
        mut step: impl FnMut() -> Result<Tensor>,
    ) -> Result<(Self, Tensor)> {
        #[cfg(feature = "cuda")]
        if let Device::Cuda(dev) = device {
            let (cuda, output, eager) = crate::cuda::graph::capture(dev, output, &mut step)?;
            let cuda = Some(cuda);
            return Ok((Self { output, cuda }, eager));
        }
        let _ = device;
        let eager = step()?;
        let graph = Self {
            output: output_for(&eager, output)?,
            #[cfg(feature = "cuda")]
            cuda: None,
        };
        Ok((graph, eager))
    }

    /// Runs the captured step again over whatever its input memory holds now, and returns
    /// its result ([`Self::output`]). On CUDA `step` is not called (the graph is launched);
    /// on the CPU it is, and its result is copied into the output memory. Errors if `step`'s
    /// result does not have the captured shape and dtype.
    pub fn replay(&self, step: impl FnOnce() -> Result<Tensor>) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if let Some(cuda) = &self.cuda {
            cuda.launch()?;
            return Ok(self.output.clone());
        }
        let result = step()?;
        check_like(&result, &self.output, "a replay")?;
        self.output.slice_set(&result.contiguous()?, 0, 0)?;
        Ok(self.output.clone())
    }

    /// The memory every replay writes the step's result into.
    pub fn output(&self) -> &Tensor {
        &self.output
    }

    /// Whether replays launch a recorded graph (CUDA) rather than rerun the step (CPU).
    pub fn is_recorded(&self) -> bool {
        #[cfg(feature = "cuda")]
        if self.cuda.is_some() {
            return true;
        }
        false
    }
}

/// The memory replays of a step whose eager result is `eager` write into: `given`, or
/// fresh memory (allocated outside any capture, so that it outlives replays).
pub(crate) fn output_for(eager: &Tensor, given: Option<Tensor>) -> Result<Tensor> {
    match given {
        Some(output) => {
            check_like(eager, &output, "the step")?;
            Ok(output)
        }
        None => eager.zeros_like(),
    }
}

/// Errors unless `result` has `output`'s shape and dtype.
fn check_like(result: &Tensor, output: &Tensor, what: &str) -> Result<()> {
    if result.shape() != output.shape() || result.dtype() != output.dtype() {
        candle_core::bail!(
            "StepGraph: {what} gave {:?} {:?}, the captured output is {:?} {:?}",
            result.dtype(),
            result.shape(),
            output.dtype(),
            output.shape()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same_memory(a: &Tensor, b: &Tensor) -> bool {
        let (a, _) = a.storage_and_layout();
        let (b, _) = b.storage_and_layout();
        std::ptr::eq(&*a, &*b)
    }

    #[test]
    fn the_cpu_twin_reruns_the_step_into_the_captured_output_memory() -> Result<()> {
        let dev = Device::Cpu;
        let input = Tensor::new(&[1f32, 2., 3.], &dev)?;
        let step = |x: &Tensor| x.affine(2.0, 1.0);
        let (graph, first) = StepGraph::capture(&dev, None, || step(&input))?;
        assert_eq!(first.to_vec1::<f32>()?, [3., 5., 7.]);
        assert!(!graph.is_recorded());
        assert!(!same_memory(&first, graph.output()));
        // New input values, the same step: the result lands in the output memory.
        let input = Tensor::new(&[10f32, 20., 30.], &dev)?;
        let again = graph.replay(|| step(&input))?;
        assert_eq!(again.to_vec1::<f32>()?, [21., 41., 61.]);
        assert!(same_memory(&again, graph.output()));
        // A step that no longer has the captured shape is refused.
        let other = Tensor::new(&[1f32, 2.], &dev)?;
        let err = graph.replay(|| step(&other)).unwrap_err();
        assert!(err.to_string().contains("captured output"), "{err}");
        // A second graph of the shape writes into the first's output memory.
        let shared = Some(graph.output().clone());
        let (second, _) = StepGraph::capture(&dev, shared, || input.affine(1.0, 0.5))?;
        let out = second.replay(|| input.affine(1.0, 0.5))?;
        assert!(same_memory(&out, graph.output()));
        assert_eq!(graph.output().to_vec1::<f32>()?, [10.5, 20.5, 30.5]);
        let wrong = Some(Tensor::zeros(2, candle_core::DType::F32, &dev)?);
        assert!(StepGraph::capture(&dev, wrong, || step(&input)).is_err());
        Ok(())
    }
}
