//! The flex implementations of the ops, with their own backward passes: each `try_*` runs when
//! its inputs live on flex (under autodiff, where noted) and hands them back otherwise.
//! Shared plumbing first (the autodiff dispatch macro, contiguous buffers, `gemm` into
//! strided destinations), then one section per op.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::{BalancedCheckpointing, CheckpointStrategy, NoCheckpointing};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::{Bytes, DType};
use rayon::prelude::*;

use crate::simd;

/// Returns `Ok($op::<C>(primitives..., args...))` as a `Tensor<$d>` when the tensors `$t...`
/// all live on flex under autodiff (either checkpointing strategy); falls through otherwise.
macro_rules! on_autodiff_flex {
    ($op:ident, [$($t:ident),+] $(, $arg:expr)*; $d:tt) => {
        if let ($(Ok($t),)+) = ($($t.clone().try_into_primitive::<Autodiff<Flex, NoCheckpointing>>(),)+) {
            return Ok(Tensor::<$d>::from_primitive::<Autodiff<Flex, NoCheckpointing>>($op::<NoCheckpointing>($($t),+ $(, $arg)*)));
        }
        if let ($(Ok($t),)+) = ($($t.clone().try_into_primitive::<Autodiff<Flex, BalancedCheckpointing>>(),)+) {
            return Ok(Tensor::<$d>::from_primitive::<Autodiff<Flex, BalancedCheckpointing>>($op::<BalancedCheckpointing>($($t),+ $(, $arg)*)));
        }
    };
}

/// Runs the fused op when `z` is a flex tensor under autodiff; hands `z` back otherwise.
pub fn try_fused(z: Tensor<2>, targets: &Tensor<1, Int>, cap: f64) -> Result<Tensor<1>, Tensor<2>> {
    if !matches!(z.device().gradient_checkpointing_strategy(), Some(_)) {
        return Err(z);
    }
    // `drop(z)` before the op: the primitive must be the buffer's only owner for the op to
    // overwrite it in place.
    if let Ok(p) = z.clone().try_into_primitive::<Autodiff<Flex, NoCheckpointing>>() {
        drop(z);
        return Ok(Tensor::from_primitive::<Autodiff<Flex, NoCheckpointing>>(fused::<NoCheckpointing>(p, targets, cap)));
    }
    if let Ok(p) = z.clone().try_into_primitive::<Autodiff<Flex, BalancedCheckpointing>>() {
        drop(z);
        return Ok(Tensor::from_primitive::<Autodiff<Flex, BalancedCheckpointing>>(fused::<BalancedCheckpointing>(p, targets, cap)));
    }
    Err(z)
}

type AdTensor<C> = burn::backend::tensor::FloatTensor<Autodiff<Flex, C>>;

/// Saved for the backward pass: the capped logits (in the logits' own buffer), each row's
/// log-sum-exp, the targets and the cap.
#[derive(Debug, Clone)]
struct State {
    capped: FlexTensor,
    lse: std::sync::Arc<Vec<f32>>,
    targets: std::sync::Arc<Vec<usize>>,
    cap: f32,
}

#[derive(Debug)]
struct SoftcapCrossEntropy;

impl Backward<Flex, 1> for SoftcapCrossEntropy {
    type State = State;

    fn backward(self, ops: Ops<State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let grad_out = grads.consume::<Flex>(&ops.node);
        let Some(parent) = parent else { return };
        let State { mut capped, lse, targets, cap } = ops.state;
        let upstream = grad_out.storage::<f32>()[grad_out.layout().start_offset()];
        let shape = capped.layout().shape().clone();
        let v = shape[1];
        let scale = upstream / targets.len() as f32;
        // Reuse the saved buffer when nothing else holds it.
        let mut grad = match capped.try_storage_mut::<f32>() {
            Some(_) => capped,
            None => FlexTensor::new(Bytes::from_elems(capped.storage::<f32>().to_vec()), Layout::contiguous(shape.clone()), DType::F32),
        };
        let data = grad.storage_mut::<f32>();
        data.par_chunks_mut(v).zip(lse.par_iter()).zip(targets.par_iter()).for_each(|((row, &lse), &t)| {
            simd::softcap_ce_backward_row(row, lse, t, cap, scale);
        });
        grads.register::<Flex>(parent.id, grad);
    }
}

fn fused<C: CheckpointStrategy>(z: AdTensor<C>, targets: &Tensor<1, Int>, cap: f64) -> AdTensor<C> {
    let cap = cap as f32;
    let targets: Vec<usize> = targets.to_data().convert::<i64>().try_into_vec::<i64>().expect("int targets").into_iter().map(|t| t as usize).collect();
    let prep = SoftcapCrossEntropy.prepare::<C>([z.node()]).compute_bound().stateful();
    let z = z.into_primitive();
    let shape = z.layout().shape().clone();
    let (n, v) = (shape[0], shape[1]);
    assert_eq!(targets.len(), n, "one target per row");
    assert!(targets.iter().all(|&t| t < v), "target id out of range");
    // Contiguous and uniquely owned: overwrite z with the capped logits.
    let mut capped = if z.is_contiguous() && z.layout().start_offset() == 0 && z.is_unique() {
        z
    } else {
        let owned = z.as_slice::<f32>().map(|s| s.to_vec()).unwrap_or_else(|| z.clone().into_data().try_into_vec::<f32>().expect("f32 logits"));
        FlexTensor::new(Bytes::from_elems(owned), Layout::contiguous(shape.clone()), DType::F32)
    };
    let mut lse = vec![0f32; n];
    let mut row_loss = vec![0f32; n];
    capped
        .storage_mut::<f32>()
        .par_chunks_mut(v)
        .zip(lse.par_iter_mut())
        .zip(row_loss.par_iter_mut())
        .zip(targets.par_iter())
        .for_each(|(((row, lse), loss), &t)| {
            *lse = simd::softcap_lse_row(row, cap);
            *loss = *lse - row[t];
        });
    let loss = (row_loss.iter().map(|&l| l as f64).sum::<f64>() / n as f64) as f32;
    let output = FlexTensor::new(Bytes::from_elems(vec![loss]), Layout::contiguous(burn::tensor::Shape::new([1])), DType::F32);
    match prep {
        OpsKind::Tracked(prep) => {
            prep.finish(State { capped, lse: std::sync::Arc::new(lse), targets: std::sync::Arc::new(targets), cap }, output)
        }
        OpsKind::UnTracked(prep) => prep.finish(output),
    }
}

/// Runs the fused attention when the inputs are flex tensors under autodiff.
#[allow(clippy::type_complexity)]
pub fn try_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    scale: f64,
    window: Option<usize>,
) -> Result<Tensor<4>, (Tensor<4>, Tensor<4>, Tensor<4>)> {
    if q.device().gradient_checkpointing_strategy().is_none() {
        return Err((q, k, v));
    }
    on_autodiff_flex!(attention_fused, [q, k, v], scale as f32, window; 4);
    Err((q, k, v))
}

/// Decoding's attention on flex (no autodiff): every query row of `q` `[B, H, Tq, D]` over
/// every key of `k`, `v` `[B, H, Tk, D]`, read in place through their strides (a window of the
/// KV cache is a view, not a copy), one (batch, head) pair per task.
#[allow(clippy::type_complexity)]
pub fn try_attention_step(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, scale: f64) -> Result<Tensor<4>, (Tensor<4>, Tensor<4>, Tensor<4>)> {
    let (Ok(qp), Ok(kp), Ok(vp)) = (q.clone().try_into_primitive::<Flex>(), k.clone().try_into_primitive::<Flex>(), v.clone().try_into_primitive::<Flex>()) else {
        return Err((q, k, v));
    };
    let rows_in_place = |t: &FlexTensor| t.dtype() == DType::F32 && t.layout().strides()[3] == 1 && t.layout().strides().iter().all(|&s| s >= 0);
    if qp.dtype() != DType::F32 || !rows_in_place(&kp) || !rows_in_place(&vp) || kp.layout().strides() != vp.layout().strides() {
        return Err((q, k, v));
    }
    let qp = contiguous(qp);
    let shape = qp.layout().shape().clone();
    let (b, h, tq, d) = (shape[0], shape[1], shape[2], shape[3]);
    let n = kp.layout().shape()[2];
    let st: Vec<usize> = kp.layout().strides().iter().map(|&s| s as usize).collect();
    let (ks, vs) = (&kp.storage::<f32>()[kp.layout().start_offset()..], &vp.storage::<f32>()[vp.layout().start_offset()..]);
    let qs = qp.as_slice::<f32>().unwrap();
    let mut out = vec![0f32; b * h * tq * d];
    out.par_chunks_mut(tq * d).enumerate().for_each_init(
        || vec![0f32; n],
        |scores, (bh, out)| {
            let base = (bh / h) * st[0] + (bh % h) * st[1];
            let span = (n - 1) * st[2] + d;
            let (keys, values) = (&ks[base..base + span], &vs[base..base + span]);
            for (i, out) in out.chunks_exact_mut(d).enumerate() {
                let q = &qs[(bh * tq + i) * d..(bh * tq + i + 1) * d];
                simd::attend_row(q, keys, values, st[2], n, d, scale as f32, scores, out);
            }
        },
    );
    Ok(Tensor::from_primitive::<Flex>(from_vec(out, shape)))
}

fn contiguous(t: FlexTensor) -> FlexTensor {
    if t.as_slice::<f32>().is_some() { t } else { t.to_contiguous() }
}

fn from_vec(data: Vec<f32>, shape: burn::tensor::Shape) -> FlexTensor {
    FlexTensor::new(Bytes::from_elems(data), Layout::contiguous(shape), DType::F32)
}

/// `dst[m, n] = alpha * a[m, k] b[k, n]` (`+=` with `accumulate`); `dst` has row stride
/// `dst_rs`, the operands are given with their (row, column) strides.
#[allow(clippy::too_many_arguments)]
fn mm(m: usize, n: usize, k: usize, dst: &mut [f32], dst_rs: usize, accumulate: bool, a: &[f32], a_rs: usize, a_cs: usize, b: &[f32], b_rs: usize, b_cs: usize, alpha: f32) {
    assert!(m > 0 && n > 0 && (m - 1) * dst_rs + n - 1 < dst.len());
    // SAFETY: the assert keeps every element of dst that gemm writes inside the slice.
    unsafe { gemm_into(m, n, k, dst.as_mut_ptr(), dst_rs, accumulate, a, a_rs, a_cs, b, b_rs, b_cs, alpha) }
}

/// Is `t` an f32 tensor whose rows and columns can be handed to `gemm` as strides?
fn gemm_ready(t: &FlexTensor) -> bool {
    t.dtype() == DType::F32 && t.layout().strides().iter().all(|&s| s >= 0)
}

/// `t`'s f32 elements from its first one, with its (row, column) strides.
fn strided2(t: &FlexTensor) -> (&[f32], usize, usize) {
    let l = t.layout();
    let s = l.strides();
    (&t.storage::<f32>()[l.start_offset()..], s[0] as usize, s[1] as usize)
}

/// Matmuls at least this large (m * n * k) use every thread, as flex's own matmul does.
const PARALLEL_GEMM: usize = 192 * 192 * 192;

/// `a[m, k] @ b[k, n]` into a fresh `[m, n]` buffer that nothing zero-fills first.
#[allow(clippy::too_many_arguments)]
fn gemm_new(m: usize, n: usize, k: usize, a: &[f32], a_rs: usize, a_cs: usize, b: &[f32], b_rs: usize, b_cs: usize) -> Vec<f32> {
    if k == 0 || m == 0 || n == 0 {
        return vec![0.0; m * n];
    }
    let mut out: Vec<std::mem::MaybeUninit<f32>> = Vec::with_capacity(m * n);
    // SAFETY: MaybeUninit needs no initialisation.
    unsafe { out.set_len(m * n) };
    // SAFETY: `gemm` with read_dst = false writes every one of the m * n elements (k > 0),
    // so the buffer is initialised when it becomes a Vec<f32>.
    unsafe {
        gemm_into(m, n, k, out.as_mut_ptr().cast(), n, false, a, a_rs, a_cs, b, b_rs, b_cs, 1.0);
        let mut out = std::mem::ManuallyDrop::new(out);
        Vec::from_raw_parts(out.as_mut_ptr().cast::<f32>(), out.len(), out.capacity())
    }
}

/// `dst[m, n] (+)= alpha * a[m, k] @ b[k, n]` for a `dst` of row stride `dst_rs`, threaded
/// when large and not already inside a parallel loop.
///
/// SAFETY: `dst` must be valid for writes at every `i * dst_rs + j`, i < m, j < n.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_into(m: usize, n: usize, k: usize, dst: *mut f32, dst_rs: usize, accumulate: bool, a: &[f32], a_rs: usize, a_cs: usize, b: &[f32], b_rs: usize, b_cs: usize, alpha: f32) {
    let last = |rs: usize, cs: usize, rows: usize, cols: usize| (rows - 1) * rs + (cols - 1) * cs;
    assert!(m > 0 && n > 0 && k > 0 && last(a_rs, a_cs, m, k) < a.len() && last(b_rs, b_cs, k, n) < b.len());
    let parallelism = if m * n * k >= PARALLEL_GEMM && rayon::current_thread_index().is_none() {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    let i = |x: usize| x as isize;
    // SAFETY: the assert keeps the operands' strides inside their slices; the caller vouches for dst.
    unsafe {
        gemm::gemm(
            m, n, k, dst, 1, i(dst_rs), accumulate, a.as_ptr(), i(a_cs), i(a_rs), b.as_ptr(), i(b_cs), i(b_rs),
            if accumulate { 1.0 } else { 0.0 }, alpha, false, false, false, parallelism,
        );
    }
}

/// Runs the gemm matmul when `x` and `w` are flex tensors (with or without autodiff).
pub fn try_matmul(x: Tensor<2>, w: Tensor<2>) -> Result<Tensor<2>, (Tensor<2>, Tensor<2>)> {
    if x.dtype() != DType::F32 || w.dtype() != DType::F32 {
        return Err((x, w));
    }
    if x.device().gradient_checkpointing_strategy().is_some() {
        on_autodiff_flex!(matmul_ad, [x, w]; 2);
        return Err((x, w));
    }
    if let (Ok(px), Ok(pw)) = (x.clone().try_into_primitive::<Flex>(), w.clone().try_into_primitive::<Flex>()) {
        if gemm_ready(&px) && gemm_ready(&pw) {
            return Ok(Tensor::from_primitive::<Flex>(matmul_plain(&px, &pw)));
        }
    }
    Err((x, w))
}

fn matmul_plain(x: &FlexTensor, w: &FlexTensor) -> FlexTensor {
    let (n, k, m) = (x.layout().shape()[0], x.layout().shape()[1], w.layout().shape()[1]);
    assert_eq!(w.layout().shape()[0], k, "matmul: [N, K] @ [K, M]");
    let ((xs, x_rs, x_cs), (ws, w_rs, w_cs)) = (strided2(x), strided2(w));
    from_vec(gemm_new(n, m, k, xs, x_rs, x_cs, ws, w_rs, w_cs), burn::tensor::Shape::new([n, m]))
}

/// Saved for the backward pass: both operands (views into their own buffers).
#[derive(Debug, Clone)]
struct MatmulState {
    x: FlexTensor,
    w: FlexTensor,
}

#[derive(Debug)]
struct Matmul;

impl Backward<Flex, 2> for Matmul {
    type State = MatmulState;

    fn backward(self, ops: Ops<MatmulState, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [nx, nw] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let dy = if gemm_ready(&dy) { dy } else { dy.to_contiguous() };
        let MatmulState { x, w } = ops.state;
        let (n, k, m) = (x.layout().shape()[0], x.layout().shape()[1], w.layout().shape()[1]);
        let ((xs, x_rs, x_cs), (ws, w_rs, w_cs), (dys, dy_rs, dy_cs)) = (strided2(&x), strided2(&w), strided2(&dy));
        if let Some(node) = nx {
            // dX[n, k] = dY[n, m] @ W^T[m, k]
            let dx = gemm_new(n, k, m, dys, dy_rs, dy_cs, ws, w_cs, w_rs);
            grads.register::<Flex>(node.id, from_vec(dx, burn::tensor::Shape::new([n, k])));
        }
        if let Some(node) = nw {
            // dW[k, m] = X^T[k, n] @ dY[n, m]
            let dw = gemm_new(k, m, n, xs, x_cs, x_rs, dys, dy_rs, dy_cs);
            grads.register::<Flex>(node.id, from_vec(dw, burn::tensor::Shape::new([k, m])));
        }
    }
}

fn matmul_ad<C: CheckpointStrategy>(x: AdTensor<C>, w: AdTensor<C>) -> AdTensor<C> {
    let prep = Matmul.prepare::<C>([x.node(), w.node()]).compute_bound().stateful();
    let ready = |t: FlexTensor| if gemm_ready(&t) { t } else { t.to_contiguous() };
    let (x, w) = (ready(x.into_primitive()), ready(w.into_primitive()));
    let output = matmul_plain(&x, &w);
    match prep {
        OpsKind::Tracked(prep) => prep.finish(MatmulState { x, w }, output),
        OpsKind::UnTracked(prep) => prep.finish(output),
    }
}

/// Runs the fused RMSNorm when `x` is a flex f32 tensor (with or without autodiff).
pub fn try_rms_norm<const N: usize>(x: Tensor<N>) -> Result<Tensor<N>, Tensor<N>> {
    if x.dtype() != DType::F32 {
        return Err(x);
    }
    if x.device().gradient_checkpointing_strategy().is_some() {
        on_autodiff_flex!(rms_norm_ad, [x], None; N);
        return Err(x);
    }
    if let Ok(p) = x.clone().try_into_primitive::<Flex>() {
        return Ok(Tensor::from_primitive::<Flex>(rms_norm_plain(&contiguous(p), None).0));
    }
    Err(x)
}

/// The rotary tables' values, `[T * D/2]` each.
#[derive(Debug)]
struct RotaryTables {
    cos: Vec<f32>,
    sin: Vec<f32>,
}

/// Runs the fused rotary + RMSNorm when `x` is a flex f32 tensor (with or without autodiff)
/// and the tables match its shape.
pub fn try_rotary_rms_norm(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Result<Tensor<4>, Tensor<4>> {
    let [_, _, t, d] = x.dims();
    if x.dtype() != DType::F32 || d % 2 != 0 || cos.dims() != [1, 1, t, d / 2] || sin.dims() != [1, 1, t, d / 2] {
        return Err(x);
    }
    let values = |table: &Tensor<4>| table.to_data().convert::<f32>().try_into_vec::<f32>().ok();
    let (Some(cos), Some(sin)) = (values(cos), values(sin)) else { return Err(x) };
    let tables = std::sync::Arc::new(RotaryTables { cos, sin });
    if x.device().gradient_checkpointing_strategy().is_some() {
        on_autodiff_flex!(rms_norm_ad, [x], Some(tables.clone()); 4);
        return Err(x);
    }
    if let Ok(p) = x.clone().try_into_primitive::<Flex>() {
        return Ok(Tensor::from_primitive::<Flex>(rms_norm_plain(&contiguous(p), Some(&tables)).0));
    }
    Err(x)
}

/// Rows of the last dimension per parallel task: enough work to outweigh the scheduling.
fn rows_per_task(d: usize) -> usize {
    (16_384 / d.max(1)).max(1)
}

/// The normed tensor (rotated first when `rotary` is given; `x` is then `[.., T, D]`) and
/// each row's `1 / sqrt(mean(y^2) + eps)`, `y` the row that is normed.
fn rms_norm_plain(x: &FlexTensor, rotary: Option<&RotaryTables>) -> (FlexTensor, Vec<f32>) {
    let shape = x.layout().shape().clone();
    let dims = shape.num_dims();
    let (t, d) = (shape[dims.saturating_sub(2)], shape[dims - 1]);
    let xs = x.as_slice::<f32>().expect("contiguous f32");
    let mut y = vec![0f32; xs.len()];
    let mut r = vec![0f32; xs.len() / d.max(1)];
    let rows = rows_per_task(d);
    y.par_chunks_mut(rows * d).zip(xs.par_chunks(rows * d)).zip(r.par_chunks_mut(rows)).enumerate().for_each(|(i, ((y, x), r))| match rotary {
        Some(tab) => simd::rotary_rms_rows(x, y, r, &tab.cos, &tab.sin, d, t, i * rows),
        None => simd::rms_norm_rows(x, y, r, d),
    });
    (from_vec(y, shape), r)
}

#[derive(Debug, Clone)]
struct RmsState {
    x: FlexTensor,
    inv_rms: std::sync::Arc<Vec<f32>>,
    rotary: Option<std::sync::Arc<RotaryTables>>,
}

#[derive(Debug)]
struct RmsNorm;

impl Backward<Flex, 1> for RmsNorm {
    type State = RmsState;

    fn backward(self, ops: Ops<RmsState, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let dy = contiguous(grads.consume::<Flex>(&ops.node));
        let Some(parent) = parent else { return };
        let RmsState { x, inv_rms, rotary } = ops.state;
        let shape = x.layout().shape().clone();
        let dims = shape.num_dims();
        let (t, d) = (shape[dims.saturating_sub(2)], shape[dims - 1]);
        let (xs, dys) = (x.as_slice::<f32>().unwrap(), dy.as_slice::<f32>().unwrap());
        let mut dx = vec![0f32; xs.len()];
        let rows = rows_per_task(d);
        dx.par_chunks_mut(rows * d)
            .zip(xs.par_chunks(rows * d))
            .zip(dys.par_chunks(rows * d))
            .zip(inv_rms.par_chunks(rows))
            .enumerate()
            .for_each(|(i, (((dx, x), dy), r))| match &rotary {
                Some(tab) => simd::rotary_rms_backward_rows(x, dy, r, &tab.cos, &tab.sin, dx, d, t, i * rows),
                None => simd::rms_norm_backward_rows(x, dy, r, dx, d),
            });
        grads.register::<Flex>(parent.id, from_vec(dx, shape));
    }
}

fn rms_norm_ad<C: CheckpointStrategy>(x: AdTensor<C>, rotary: Option<std::sync::Arc<RotaryTables>>) -> AdTensor<C> {
    let prep = RmsNorm.prepare::<C>([x.node()]).compute_bound().stateful();
    let x = contiguous(x.into_primitive());
    let (output, inv_rms) = rms_norm_plain(&x, rotary.as_deref());
    match prep {
        OpsKind::Tracked(prep) => prep.finish(RmsState { x, inv_rms: std::sync::Arc::new(inv_rms), rotary }, output),
        OpsKind::UnTracked(prep) => prep.finish(output),
    }
}

/// Runs the fused `relu(x)^2` when `x` is a flex f32 tensor (with or without autodiff).
pub fn try_relu_squared<const N: usize>(x: Tensor<N>) -> Result<Tensor<N>, Tensor<N>> {
    if x.dtype() != DType::F32 {
        return Err(x);
    }
    if x.device().gradient_checkpointing_strategy().is_some() {
        on_autodiff_flex!(relu_squared_ad, [x]; N);
        return Err(x);
    }
    if let Ok(p) = x.clone().try_into_primitive::<Flex>() {
        return Ok(Tensor::from_primitive::<Flex>(relu_squared_plain(&contiguous(p))));
    }
    Err(x)
}

/// Elements per parallel task of the element-wise kernels.
const ELEMENTS_PER_TASK: usize = 1 << 16;

fn relu_squared_plain(x: &FlexTensor) -> FlexTensor {
    let xs = x.as_slice::<f32>().expect("contiguous f32");
    let mut y = vec![0f32; xs.len()];
    y.par_chunks_mut(ELEMENTS_PER_TASK).zip(xs.par_chunks(ELEMENTS_PER_TASK)).for_each(|(y, x)| simd::relu_squared(x, y));
    from_vec(y, x.layout().shape().clone())
}

#[derive(Debug)]
struct ReluSquared;

impl Backward<Flex, 1> for ReluSquared {
    /// The input (contiguous).
    type State = FlexTensor;

    fn backward(self, ops: Ops<FlexTensor, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let dy = contiguous(grads.consume::<Flex>(&ops.node));
        let Some(parent) = parent else { return };
        let x = ops.state;
        let (xs, dys) = (x.as_slice::<f32>().unwrap(), dy.as_slice::<f32>().unwrap());
        let mut dx = vec![0f32; xs.len()];
        dx.par_chunks_mut(ELEMENTS_PER_TASK)
            .zip(xs.par_chunks(ELEMENTS_PER_TASK))
            .zip(dys.par_chunks(ELEMENTS_PER_TASK))
            .for_each(|((dx, x), dy)| simd::relu_squared_backward(x, dy, dx));
        grads.register::<Flex>(parent.id, from_vec(dx, x.layout().shape().clone()));
    }
}

fn relu_squared_ad<C: CheckpointStrategy>(x: AdTensor<C>) -> AdTensor<C> {
    let prep = ReluSquared.prepare::<C>([x.node()]).compute_bound().stateful();
    let x = contiguous(x.into_primitive());
    let output = relu_squared_plain(&x);
    match prep {
        OpsKind::Tracked(prep) => prep.finish(x, output),
        OpsKind::UnTracked(prep) => prep.finish(output),
    }
}

/// Runs the vectorised soft-cap when `z` is a flex f32 tensor without autodiff.
pub fn try_softcap<const N: usize>(z: Tensor<N>, cap: f64) -> Result<Tensor<N>, Tensor<N>> {
    if z.device().gradient_checkpointing_strategy().is_some() {
        return Err(z);
    }
    let Ok(p) = z.clone().try_into_primitive::<Flex>() else { return Err(z) };
    if p.dtype() != DType::F32 {
        return Err(z);
    }
    drop(z); // the primitive alone owns the buffer: it is capped in place
    let mut p = contiguous(p);
    let shape = p.layout().shape().clone();
    let d = shape[shape.num_dims() - 1].max(1);
    let whole_buffer = p.layout().start_offset() == 0 && p.storage::<f32>().len() == shape.num_elements();
    if !whole_buffer || p.try_storage_mut::<f32>().is_none() {
        p = from_vec(p.as_slice::<f32>().unwrap().to_vec(), shape);
    }
    let cap = cap as f32;
    p.storage_mut::<f32>().par_chunks_mut(rows_per_task(d) * d).for_each(|rows| simd::softcap_in_place(rows, cap));
    Ok(Tensor::from_primitive::<Flex>(p))
}

/// Query rows are processed in blocks of this many, each against keys up to its last row
/// only: the causal half of the scores is never computed.
const ROW_BLOCK: usize = 64;

/// Row blocks `r0..r1` of a sequence of `t`, with the first key any of their rows sees.
fn row_blocks(t: usize, window: Option<usize>) -> impl Iterator<Item = (usize, usize, usize)> {
    (0..t).step_by(ROW_BLOCK).map(move |r0| (r0, (r0 + ROW_BLOCK).min(t), first_key(r0, window)))
}

/// Keys query `i` may see: `lo(i) ..= i`.
fn first_key(i: usize, window: Option<usize>) -> usize {
    window.map_or(0, |w| i.saturating_sub(w))
}

#[derive(Debug, Clone)]
struct AttnState {
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    probs: FlexTensor,
    scale: f32,
    window: Option<usize>,
}

#[derive(Debug)]
struct CausalAttention;

impl Backward<Flex, 3> for CausalAttention {
    type State = AttnState;

    fn backward(self, ops: Ops<AttnState, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [nq, nk, nv] = ops.parents;
        let d_out = contiguous(grads.consume::<Flex>(&ops.node));
        let AttnState { q, k, v, probs, scale, window } = ops.state;
        let shape = q.layout().shape().clone();
        let (t, d) = (shape[2], shape[3]);
        let (q, k, v, p, go) = (q.as_slice::<f32>().unwrap(), k.as_slice::<f32>().unwrap(), v.as_slice::<f32>().unwrap(), probs.as_slice::<f32>().unwrap(), d_out.as_slice::<f32>().unwrap());
        let n = q.len();
        let (mut dq, mut dk, mut dv) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
        dq.par_chunks_mut(t * d)
            .zip(dk.par_chunks_mut(t * d))
            .zip(dv.par_chunks_mut(t * d))
            .enumerate()
            .for_each_init(
                || vec![0f32; ROW_BLOCK * t],
                |ds, (hd, ((dq, dk), dv))| {
                    let (o, po) = (hd * t * d, hd * t * t);
                    let (q, k, v, go, p) = (&q[o..o + t * d], &k[o..o + t * d], &v[o..o + t * d], &go[o..o + t * d], &p[po..po + t * t]);
                    for (r0, r1, k0) in row_blocks(t, window) {
                        let (rows, nk) = (r1 - r0, r1 - k0);
                        // dP = dO V^T, then dS = P * (dP - rowsum(P * dP)) * scale (0 off the mask).
                        mm(rows, nk, d, ds, nk, false, &go[r0 * d..], d, 1, &v[k0 * d..], 1, d, 1.0);
                        for i in r0..r1 {
                            let row = &mut ds[(i - r0) * nk..(i - r0 + 1) * nk];
                            let prow = &p[i * t + k0..i * t + r1];
                            let (lo, hi) = (first_key(i, window) - k0, i - k0);
                            let delta: f32 = (lo..=hi).map(|j| prow[j] * row[j]).sum();
                            for (j, x) in row.iter_mut().enumerate() {
                                *x = if j < lo || j > hi { 0.0 } else { prow[j] * (*x - delta) * scale };
                            }
                        }
                        mm(rows, d, nk, &mut dq[r0 * d..], d, false, ds, nk, 1, &k[k0 * d..], d, 1, 1.0); // dQ = dS K
                        mm(nk, d, rows, &mut dk[k0 * d..], d, true, ds, 1, nk, &q[r0 * d..], d, 1, 1.0); // dK += dS^T Q
                        mm(nk, d, rows, &mut dv[k0 * d..], d, true, &p[r0 * t + k0..], 1, t, &go[r0 * d..], d, 1, 1.0); // dV += P^T dO
                    }
                },
            );
        for (node, grad) in [(nq, dq), (nk, dk), (nv, dv)] {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, from_vec(grad, shape.clone()));
            }
        }
    }
}

fn attention_fused<C: CheckpointStrategy>(q: AdTensor<C>, k: AdTensor<C>, v: AdTensor<C>, scale: f32, window: Option<usize>) -> AdTensor<C> {
    let prep = CausalAttention.prepare::<C>([q.node(), k.node(), v.node()]).compute_bound().stateful();
    let (q, k, v) = (contiguous(q.into_primitive()), contiguous(k.into_primitive()), contiguous(v.into_primitive()));
    let shape = q.layout().shape().clone();
    assert_eq!(&shape, k.layout().shape(), "q and k shapes");
    assert_eq!(&shape, v.layout().shape(), "q and v shapes");
    let (b, h, t, d) = (shape[0], shape[1], shape[2], shape[3]);
    let (qs, ks, vs) = (q.as_slice::<f32>().unwrap(), k.as_slice::<f32>().unwrap(), v.as_slice::<f32>().unwrap());
    let mut out = vec![0f32; b * h * t * d];
    let mut probs = vec![0f32; b * h * t * t];
    out.par_chunks_mut(t * d).zip(probs.par_chunks_mut(t * t)).enumerate().for_each(|(hd, (out, p))| {
        let o = hd * t * d;
        let (q, k, v) = (&qs[o..o + t * d], &ks[o..o + t * d], &vs[o..o + t * d]);
        for (r0, r1, k0) in row_blocks(t, window) {
            let (rows, nk) = (r1 - r0, r1 - k0);
            mm(rows, nk, d, &mut p[r0 * t + k0..], t, false, &q[r0 * d..], d, 1, &k[k0 * d..], 1, d, scale); // S = scale Q K^T
            for i in r0..r1 {
                let row = &mut p[i * t..(i + 1) * t];
                let lo = first_key(i, window);
                row[..lo].fill(0.0);
                row[i + 1..].fill(0.0);
                simd::softmax_in_place(&mut row[lo..=i]);
            }
            mm(rows, d, nk, &mut out[r0 * d..], d, false, &p[r0 * t + k0..], t, 1, &v[k0 * d..], d, 1, 1.0); // O = P V
        }
    });
    let output = from_vec(out, shape.clone());
    match prep {
        OpsKind::Tracked(prep) => {
            let probs = from_vec(probs, burn::tensor::Shape::new([b, h, t, t]));
            prep.finish(AttnState { q, k, v, probs, scale, window }, output)
        }
        OpsKind::UnTracked(prep) => prep.finish(output),
    }
}
