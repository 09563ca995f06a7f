//! [`KdBackend`] for burn's `Fusion<B>` wrapper (feature `cuda`, which turns burn's fusion on, as
//! burn's default `Cuda` backend has it): each primitive is registered as one opaque fusion custom
//! operation whose outputs are described up front (shapes and dtypes follow from the inputs), and which
//! runs `B`'s primitive when fusion executes its queue. Fusion orders it with the operations around it;
//! `B` (cubecl, [`super::cuda`]) orders it against cubecl's own queue.
//!
//! The pair primitives go through [`lazy`], the packed ones through `lazy_packed`, each once for every family
//! it serves; a new kind of primitive is one [`lazy`] call per primitive ([`lazy_dyn`] for a number of inputs
//! known at run time).

use ::burn::backend::fusion::custom::{
    CustomOpIr, HandleContainer, OperationFn, OperationIr, StreamId, TensorId, TensorIr, TensorSpec,
};
use ::burn::backend::fusion::{Fusion, FusionBackend, FusionRuntime, FusionTensor};
use ::burn::backend::tensor::FloatTensor;
use ::burn::backend::ExecutionError;
use ::burn::tensor::Shape;

use super::packed::scatter;
use super::{KdBackend, PackedConfig, PackedInputs, PairConfig};

/// A float tensor of `Fusion<B>`.
type Lazy<B> = FusionTensor<<B as FusionBackend>::FusionRuntime>;

/// Registers one custom operation of `N` float inputs on their fusion stream: `outputs` describes what
/// `execute` returns (the same count, shapes and dtypes, in order), and `execute` runs `B`'s primitive on
/// the inputs when fusion executes it. Returns the lazy outputs.
///
/// # Panics
///
/// When executed, if `execute` returns another number of tensors than `outputs` describes.
pub fn lazy<B: FusionBackend, const N: usize>(
    id: &'static str,
    inputs: [Lazy<B>; N],
    outputs: Vec<TensorSpec>,
    execute: impl Fn([FloatTensor<B>; N]) -> Vec<FloatTensor<B>> + Send + Sync + 'static,
) -> Vec<Lazy<B>> {
    lazy_dyn::<B>(id, inputs.into(), outputs, move |tensors| {
        let Ok(tensors) = <[FloatTensor<B>; N]>::try_from(tensors) else {
            unreachable!("N inputs registered, N resolved")
        };
        execute(tensors)
    })
}

/// [`lazy`] for a number of inputs known only at run time (at least one; a list of layers).
///
/// # Panics
///
/// Without inputs; when executed, as [`lazy`].
pub fn lazy_dyn<B: FusionBackend>(
    id: &'static str,
    inputs: Vec<Lazy<B>>,
    outputs: Vec<TensorSpec>,
    execute: impl Fn(Vec<FloatTensor<B>>) -> Vec<FloatTensor<B>> + Send + Sync + 'static,
) -> Vec<Lazy<B>> {
    register::<B>(id, inputs, outputs, move |irs, handles| {
        execute(irs.iter().map(|ir| handles.get_float_tensor::<B>(ir)).collect())
    })
}

/// The resolved handles of a fusion stream's tensors.
type Handles<B> = HandleContainer<<<B as FusionBackend>::FusionRuntime as FusionRuntime>::FusionHandle>;

/// Registers one custom operation on `inputs` (float or int: `execute` resolves each input from its IR as
/// its kind asks); as [`lazy_dyn`] otherwise.
fn register<B: FusionBackend>(
    id: &'static str,
    inputs: Vec<Lazy<B>>,
    outputs: Vec<TensorSpec>,
    execute: impl Fn(&[TensorIr], &mut Handles<B>) -> Vec<FloatTensor<B>> + Send + Sync + 'static,
) -> Vec<Lazy<B>> {
    let client = inputs.first().expect("a custom operation has inputs").client.clone();
    let inputs: Vec<TensorIr> = inputs.into_iter().map(|t| t.into_ir()).collect();
    let outputs: Vec<TensorIr> = outputs
        .into_iter()
        .map(|spec| TensorIr::uninit(client.create_empty_handle(), spec.shape, spec.dtype))
        .collect();
    let ids: Vec<TensorId> = outputs.iter().map(|t| t.id).collect();
    let desc = CustomOpIr { id: id.into(), inputs: inputs.clone(), outputs, scalars: Vec::new() };
    let op = OperationFn(move |handles: &mut Handles<B>| {
        let results = execute(&inputs, handles);
        assert_eq!(results.len(), ids.len(), "kd_kernels_burn: {id} returned another number of outputs");
        for (id, tensor) in ids.iter().zip(results) {
            handles.register_float_tensor::<B>(id, tensor);
        }
        Ok::<(), ExecutionError>(())
    });
    client.register(StreamId::current(), OperationIr::Custom(desc), op)
}

/// [`lazy`] for a packed loss: its float inputs, then its integer one where it has one, each resolved as its kind
/// asks and put back into the call's [`PackedInputs`] for `execute`.
fn lazy_packed<B: FusionBackend>(
    id: &'static str,
    inputs: PackedInputs<Fusion<B>>,
    outputs: Vec<TensorSpec>,
    execute: impl Fn(PackedInputs<B>) -> Vec<FloatTensor<B>> + Send + Sync + 'static,
) -> Vec<Lazy<B>> {
    let (floats, labels) = inputs.into_parts();
    let arity = floats.len();
    register::<B>(id, floats.into_iter().chain(labels).collect(), outputs, move |irs, handles| {
        let floats = irs[..arity].iter().map(|ir| handles.get_float_tensor::<B>(ir)).collect();
        let labels = irs.get(arity).map(|ir| handles.get_int_tensor::<B>(ir));
        execute(PackedInputs::from_parts(floats, labels))
    })
}

/// The loss: one element of the input's dtype.
fn loss<B: FusionBackend>(like: &Lazy<B>) -> TensorSpec {
    TensorSpec::new(Shape::from(vec![1]), like.dtype)
}

/// A gradient: the input's shape and dtype.
fn grad<B: FusionBackend>(like: &Lazy<B>) -> TensorSpec {
    TensorSpec::new(like.shape.clone(), like.dtype)
}

/// The only output of a call.
fn single<T>(outputs: Vec<T>) -> T {
    outputs.into_iter().next().expect("one output registered")
}

impl<B: FusionBackend + KdBackend> KdBackend for Fusion<B> {
    fn pair_forward(student: FloatTensor<Self>, teacher: FloatTensor<Self>, config: PairConfig) -> FloatTensor<Self> {
        let specs = vec![loss::<B>(&student)];
        single(lazy::<B, 2>("kd_pair_forward", [student, teacher], specs, move |[s, t]| {
            vec![B::pair_forward(s, t, config)]
        }))
    }

    fn pair_forward_backward(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        config: PairConfig,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, Option<FloatTensor<Self>>) {
        let mut specs = vec![loss::<B>(&student), grad::<B>(&student)];
        if config.teacher_grad() {
            specs.push(grad::<B>(&teacher));
        }
        let out = lazy::<B, 2>("kd_pair_forward_backward", [student, teacher], specs, move |[s, t]| {
            let (loss, gs, gt) = B::pair_forward_backward(s, t, config);
            [loss, gs].into_iter().chain(gt).collect()
        });
        let mut out = out.into_iter();
        let (loss, gs) = (out.next().expect("loss"), out.next().expect("student gradient"));
        (loss, gs, out.next())
    }

    fn packed_forward(inputs: PackedInputs<Self>, config: PackedConfig) -> FloatTensor<Self> {
        let specs = vec![loss::<B>(inputs.floats()[0])];
        single(lazy_packed::<B>("kd_packed_forward", inputs, specs, move |inputs| {
            vec![B::packed_forward(inputs, config.clone())]
        }))
    }

    fn packed_forward_backward(
        inputs: PackedInputs<Self>,
        config: PackedConfig,
    ) -> (FloatTensor<Self>, Vec<Option<FloatTensor<Self>>>) {
        let want = config.grads();
        let floats = inputs.floats();
        let grads = floats.iter().zip(want).filter(|(_, &w)| w).map(|(input, _)| grad::<B>(input));
        let specs = std::iter::once(loss::<B>(floats[0])).chain(grads).collect();
        let out = lazy_packed::<B>("kd_packed_forward_backward", inputs, specs, move |inputs| {
            let (loss, grads) = B::packed_forward_backward(inputs, config.clone());
            std::iter::once(loss).chain(grads.into_iter().flatten()).collect()
        });
        let mut out = out.into_iter();
        let loss = out.next().expect("the loss registered first");
        (loss, scatter(want.iter().copied(), out))
    }
}
