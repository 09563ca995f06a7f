//! [`KdBackend`] for burn's `Autodiff<B>` wrapper: the forward runs `B`'s fused loss-and-gradient
//! primitive and keeps the gradients; the backward step scales them by the upstream gradient.
//!
//! Keeping the gradient from the forward costs one tensor of the student's size until the backward, and
//! saves reading the logits again there: the fused kernels read them once for both.

use ::burn::backend::autodiff::checkpoint::base::Checkpointer;
use ::burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use ::burn::backend::autodiff::grads::Gradients;
use ::burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use ::burn::backend::tensor::{FloatTensor, IntTensor};
use ::burn::backend::{Autodiff, AutodiffBackend, Backend, TensorMetadata};
use ::burn::tensor::Shape;

use super::{KdBackend, PairConfig};
use kd_kernels::cwt::CwtSetup;
use kd_kernels::ifvd::IfvdConfig;
use kd_kernels::pkd::{PkdConfig, PkdLevels};
use kd_kernels::semckd::{SemckdConfig, SemckdLayers};

/// The backward step of a fused loss: the gradients computed in the forward, times the upstream
/// gradient, for every input that is tracked and has one.
#[derive(Debug)]
struct StoredGradients;

impl<B: Backend, const N: usize> Backward<B, N> for StoredGradients {
    /// d loss / d input, per input, where the loss computed it.
    type State = [Option<FloatTensor<B>>; N];

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let upstream = grads.consume::<B>(&ops.node);
        for (node, grad) in ops.parents.into_iter().zip(ops.state) {
            // A tracked input without a gradient (a tracked teacher) is refused by the checked functions.
            if let (Some(node), Some(grad)) = (node, grad) {
                grads.register::<B>(node.id, times_upstream::<B>(grad, upstream.clone()));
            }
        }
    }
}

/// `grad * upstream`, the one-element upstream broadcast over `grad` and cast to its dtype (SemCKD's f32
/// parameters get their gradients under an f64 loss when its maps are f64).
fn times_upstream<B: Backend>(grad: FloatTensor<B>, upstream: FloatTensor<B>) -> FloatTensor<B> {
    let upstream =
        if upstream.dtype() == grad.dtype() { upstream } else { B::float_cast(upstream, grad.dtype().into()) };
    let shape = grad.shape();
    let ones = Shape::from(vec![1; shape.num_dims()]);
    let upstream = B::float_expand(B::float_reshape(upstream, ones), shape);
    B::float_mul(grad, upstream)
}

/// A loss of `N` inputs on `Autodiff<B, C>`: `forward_backward` (the loss and a gradient per input, where
/// the loss has one) when an input is tracked, `forward` (the loss alone) when none is.
pub fn fused<B, C, const N: usize>(
    inputs: [FloatTensor<Autodiff<B, C>>; N],
    forward: impl FnOnce([FloatTensor<B>; N]) -> FloatTensor<B>,
    forward_backward: impl FnOnce([FloatTensor<B>; N]) -> (FloatTensor<B>, [Option<FloatTensor<B>>; N]),
) -> FloatTensor<Autodiff<B, C>>
where
    B: Backend,
    C: CheckpointStrategy,
{
    let (primitives, nodes): (Vec<_>, Vec<_>) = inputs.into_iter().map(|t| t.into_parts()).unzip();
    let (Ok(primitives), Ok(nodes)) = (<[_; N]>::try_from(primitives), <[_; N]>::try_from(nodes)) else {
        unreachable!("N inputs give N primitives and N nodes")
    };
    match StoredGradients.prepare::<C>(nodes).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let (loss, grads) = forward_backward(primitives);
            prep.finish(grads, loss)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(primitives)),
    }
}

/// A (student, teacher) loss whose only gradient is the student's, through [`fused`].
fn student_gradient_only<B: Backend, C: CheckpointStrategy>(
    student: FloatTensor<Autodiff<B, C>>,
    teacher: FloatTensor<Autodiff<B, C>>,
    forward: impl FnOnce(FloatTensor<B>, FloatTensor<B>) -> FloatTensor<B>,
    forward_backward: impl FnOnce(FloatTensor<B>, FloatTensor<B>) -> (FloatTensor<B>, FloatTensor<B>),
) -> FloatTensor<Autodiff<B, C>> {
    fused::<B, C, 2>(
        [student, teacher],
        |[s, t]| forward(s, t),
        |[s, t]| {
            let (loss, grad) = forward_backward(s, t);
            (loss, [Some(grad), None])
        },
    )
}

/// A float tensor of `Autodiff<B, C>`.
type AutodiffFloat<B, C> = FloatTensor<Autodiff<B, C>>;

/// A (student, teacher) loss's fused primitive called directly on autodiff tensors: `B`'s, on their inner
/// primitives, its outputs untracked values.
fn on_inner<B: Backend, C: CheckpointStrategy>(
    student: FloatTensor<Autodiff<B, C>>,
    teacher: FloatTensor<Autodiff<B, C>>,
    forward_backward: impl FnOnce(FloatTensor<B>, FloatTensor<B>) -> (FloatTensor<B>, FloatTensor<B>),
) -> (AutodiffFloat<B, C>, AutodiffFloat<B, C>) {
    let (loss, grad) = forward_backward(inner::<B, C>(student), inner::<B, C>(teacher));
    (constant::<B, C>(loss), constant::<B, C>(grad))
}

/// The inner backend's primitive of an autodiff tensor.
fn inner<B: Backend, C: CheckpointStrategy>(tensor: FloatTensor<Autodiff<B, C>>) -> FloatTensor<B> {
    Autodiff::<B, C>::inner(tensor)
}

/// An untracked autodiff tensor around an inner primitive (gradients returned as values, not graph nodes).
fn constant<B: Backend, C: CheckpointStrategy>(tensor: FloatTensor<B>) -> FloatTensor<Autodiff<B, C>> {
    Autodiff::<B, C>::from_inner(tensor)
}

impl<B: KdBackend, C: CheckpointStrategy> KdBackend for Autodiff<B, C> {
    fn pair_forward(student: FloatTensor<Self>, teacher: FloatTensor<Self>, config: PairConfig) -> FloatTensor<Self> {
        fused::<B, C, 2>(
            [student, teacher],
            |[s, t]| B::pair_forward(s, t, config),
            |[s, t]| {
                let (loss, gs, gt) = B::pair_forward_backward(s, t, config);
                (loss, [Some(gs), gt])
            },
        )
    }

    fn pair_forward_backward(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        config: PairConfig,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, Option<FloatTensor<Self>>) {
        let (loss, gs, gt) = B::pair_forward_backward(inner::<B, C>(student), inner::<B, C>(teacher), config);
        (constant::<B, C>(loss), constant::<B, C>(gs), gt.map(constant::<B, C>))
    }

    fn pkd_forward(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        levels: PkdLevels,
        config: PkdConfig,
    ) -> FloatTensor<Self> {
        let again = levels.clone();
        student_gradient_only::<B, C>(
            student,
            teacher,
            |s, t| B::pkd_forward(s, t, levels, config),
            |s, t| B::pkd_forward_backward(s, t, again, config),
        )
    }

    fn pkd_forward_backward(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        levels: PkdLevels,
        config: PkdConfig,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        on_inner::<B, C>(student, teacher, |s, t| B::pkd_forward_backward(s, t, levels, config))
    }

    // The labels are integers: burn's autodiff tracks none, so they travel beside the float inputs.
    fn ifvd_forward(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        labels: IntTensor<Self>,
        config: IfvdConfig,
    ) -> FloatTensor<Self> {
        let again = labels.clone();
        student_gradient_only::<B, C>(
            student,
            teacher,
            |s, t| B::ifvd_forward(s, t, labels, config),
            |s, t| B::ifvd_forward_backward(s, t, again, config),
        )
    }

    fn ifvd_forward_backward(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        labels: IntTensor<Self>,
        config: IfvdConfig,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        on_inner::<B, C>(student, teacher, |s, t| B::ifvd_forward_backward(s, t, labels, config))
    }

    fn cwt_forward(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        params: FloatTensor<Self>,
        setup: CwtSetup,
    ) -> FloatTensor<Self> {
        fused::<B, C, 3>(
            [student, teacher, params],
            |[s, t, p]| B::cwt_forward(s, t, p, setup),
            |[s, t, p]| {
                let (loss, gs, gp) = B::cwt_forward_backward(s, t, p, setup);
                (loss, [Some(gs), None, Some(gp)])
            },
        )
    }

    fn cwt_forward_backward(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        params: FloatTensor<Self>,
        setup: CwtSetup,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let [s, t, p] = [student, teacher, params].map(inner::<B, C>);
        let (loss, gs, gp) = B::cwt_forward_backward(s, t, p, setup);
        (constant::<B, C>(loss), constant::<B, C>(gs), constant::<B, C>(gp))
    }

    fn semckd_forward(
        maps: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        params: FloatTensor<Self>,
        layers: SemckdLayers,
        config: SemckdConfig,
    ) -> FloatTensor<Self> {
        fused::<B, C, 3>(
            [maps, teacher, params],
            |[m, t, p]| B::semckd_forward(m, t, p, layers.clone(), config),
            |[m, t, p]| {
                let (loss, gm, gp) = B::semckd_forward_backward(m, t, p, layers.clone(), config);
                (loss, [Some(gm), None, Some(gp)])
            },
        )
    }

    fn semckd_forward_backward(
        maps: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        params: FloatTensor<Self>,
        layers: SemckdLayers,
        config: SemckdConfig,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let [m, t, p] = [maps, teacher, params].map(inner::<B, C>);
        let (loss, gm, gp) = B::semckd_forward_backward(m, t, p, layers, config);
        (constant::<B, C>(loss), constant::<B, C>(gm), constant::<B, C>(gp))
    }
}
