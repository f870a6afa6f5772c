//! The CUDA side of [`crate::StepGraph`]: stream capture of a step through cudarc, with
//! candle's host-to-device cache so that the small layout uploads some candle ops make
//! (dims and strides of non-contiguous operands) are served from device copies made during
//! the eager run instead of reading host memory at replay.
//!
//! Memory: every allocation the captured step makes goes through cudarc's stream-ordered
//! allocator (`cuMemAllocAsync`, required here: [`capture`] refuses a device without it)
//! and becomes a node of the graph; the step's tensors, its result included, are dropped
//! before capture ends, so each allocation is freed within the graph and the memory is the
//! graph's own from replay to replay. The result is first copied into the output tensor
//! allocated before capture, which outlives every replay.
//!
//! Nothing here has run on a GPU yet: the GPU proof script compares graph replays with
//! eager steps (scripts/gpu-run.sh).

use candle_core::cuda_backend::cudarc::driver::{sys, CudaGraph};
use candle_core::cuda_backend::{CudaDevice, WrapErr};
use candle_core::{bail, Result, Tensor};

/// An instantiated graph of one step.
pub(crate) struct Captured {
    graph: CudaGraph,
}

// SAFETY: a `CudaGraph` holds raw driver handles that must not be used from two threads at
// once; `Captured` is reachable only through its owner (`StepGraph`, kept by the engine's
// runner and used by the engine thread alone), which may move between threads but is never
// shared: `Captured` is deliberately not `Sync`.
unsafe impl Send for Captured {}

impl Captured {
    /// Launches the graph on the stream it was captured on (asynchronous, like any launch).
    pub(crate) fn launch(&self) -> Result<()> {
        self.graph.launch().w()
    }
}

/// Captures `step` on `dev`'s stream (see the module docs): runs it eagerly with the
/// host-to-device cache on, takes `output` or allocates one like its result, then records it under
/// capture with the copy of its result into the output. Returns the graph, the output and
/// the eager result.
pub(crate) fn capture(
    dev: &CudaDevice,
    output: Option<Tensor>,
    step: &mut dyn FnMut() -> Result<Tensor>,
) -> Result<(Captured, Tensor, Tensor)> {
    let stream = dev.cuda_stream();
    if !stream.context().has_async_alloc() {
        bail!(
            "CUDA graphs need stream-ordered allocation (cuMemAllocAsync), which this device lacks"
        );
    }
    // Uploads of the eager run are cached; under capture the same uploads are served from
    // the cache (candle refuses any other upload while capturing).
    let _cache = dev.enable_cuda_graph_htod_cache();
    let eager = step()?;
    let output = crate::graph::output_for(&eager, output)?;
    stream.synchronize().w()?;
    stream
        .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .w()?;
    let recorded = (|| -> Result<()> {
        let result = step()?;
        output.slice_set(&result.contiguous()?, 0, 0)
    })();
    // Capture always ends, so that the stream is usable whatever happened.
    let graph = stream.end_capture(sys::CUgraphInstantiate_flags(0));
    recorded?;
    let Some(graph) = graph.w()? else {
        bail!("CUDA graph capture recorded nothing");
    };
    graph.upload().w()?;
    Ok((Captured { graph }, output, eager))
}
