//! [`KdBackend`] for burn's `Autodiff<B>` wrapper: the forward runs `B`'s fused loss-and-gradient
//! primitive and keeps the gradients; the backward step scales them by the upstream gradient.
//!
//! Keeping the gradient from the forward costs one tensor of the student's size until the backward, and
//! saves reading the logits again there: the fused kernels read them once for both.

use ::burn::backend::autodiff::checkpoint::base::Checkpointer;
use ::burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use ::burn::backend::autodiff::grads::Gradients;
use ::burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use ::burn::backend::tensor::FloatTensor;
use ::burn::backend::{Autodiff, AutodiffBackend, Backend, TensorMetadata};
use ::burn::tensor::Shape;

use super::{KdBackend, PackedConfig, PackedInputs, PairConfig};

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

/// `grad * upstream`, the one-element upstream broadcast over `grad` and cast to its dtype (a packed loss's f32
/// parameters get their gradients under an f64 loss when its features are f64).
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

/// A packed loss of `N` float inputs through [`fused`]: `rebuild` puts the inner primitives back into the call's
/// [`PackedInputs`] (with its integer input, which autodiff does not track).
fn fused_packed<B: KdBackend, C: CheckpointStrategy, const N: usize>(
    floats: [FloatTensor<Autodiff<B, C>>; N],
    rebuild: impl Fn([FloatTensor<B>; N]) -> PackedInputs<B>,
    config: PackedConfig,
) -> FloatTensor<Autodiff<B, C>> {
    let again = config.clone();
    fused::<B, C, N>(
        floats,
        |floats| B::packed_forward(rebuild(floats), config),
        |floats| {
            let (loss, grads) = B::packed_forward_backward(rebuild(floats), again);
            let Ok(grads) = <[_; N]>::try_from(grads) else { unreachable!("one gradient slot per float input") };
            (loss, grads)
        },
    )
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

    // The arity is a constant for burn's autodiff (one parent node per float input), hence one line per
    // variant; the labels are integers, which it does not track, so they travel beside the float inputs.
    fn packed_forward(inputs: PackedInputs<Self>, config: PackedConfig) -> FloatTensor<Self> {
        match inputs {
            PackedInputs::Two(a, b) => fused_packed::<B, C, 2>([a, b], |[a, b]| PackedInputs::Two(a, b), config),
            PackedInputs::Three(a, b, c) => {
                fused_packed::<B, C, 3>([a, b, c], |[a, b, c]| PackedInputs::Three(a, b, c), config)
            }
            PackedInputs::TwoLabelled(a, b, labels) => {
                fused_packed::<B, C, 2>([a, b], move |[a, b]| PackedInputs::TwoLabelled(a, b, labels.clone()), config)
            }
        }
    }

    fn packed_forward_backward(
        inputs: PackedInputs<Self>,
        config: PackedConfig,
    ) -> (FloatTensor<Self>, Vec<Option<FloatTensor<Self>>>) {
        let (floats, labels) = inputs.into_parts();
        let inputs = PackedInputs::<B>::from_parts(floats.into_iter().map(inner::<B, C>).collect(), labels);
        let (loss, grads) = B::packed_forward_backward(inputs, config);
        (constant::<B, C>(loss), grads.into_iter().map(|g| g.map(constant::<B, C>)).collect())
    }
}
