//! [`KdBackend`] for burn's `Fusion<B>` wrapper (feature `cuda`, which turns burn's fusion on, as
//! burn's default `Cuda` backend has it): each primitive is registered as one opaque fusion custom
//! operation whose outputs are described up front (shapes and dtypes follow from the inputs), and which
//! runs `B`'s primitive when fusion executes its queue. Fusion orders it with the operations around it;
//! `B` (cubecl, [`super::cuda`]) orders it against cubecl's own queue.
//!
//! Adding a family is one [`lazy`] call per primitive ([`lazy_dyn`] for a list of layers; IFVD's labels, an
//! integer input, go through `lazy_labelled`).

use ::burn::backend::fusion::custom::{
    CustomOpIr, HandleContainer, OperationFn, OperationIr, StreamId, TensorId, TensorIr, TensorSpec,
};
use ::burn::backend::fusion::{Fusion, FusionBackend, FusionRuntime, FusionTensor};
use ::burn::backend::tensor::{FloatTensor, IntTensor};
use ::burn::backend::ExecutionError;
use ::burn::tensor::Shape;

use super::{loss_and_grad, KdBackend, PairConfig};
use kd_kernels::cwt::CwtSetup;
use kd_kernels::ifvd::IfvdConfig;
use kd_kernels::pkd::{PkdConfig, PkdLevels};
use kd_kernels::semckd::{SemckdConfig, SemckdLayers};

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

/// [`lazy`] for a (student, teacher) loss that also reads an integer tensor (IFVD's labels).
fn lazy_labelled<B: FusionBackend>(
    id: &'static str,
    student: Lazy<B>,
    teacher: Lazy<B>,
    labels: Lazy<B>,
    outputs: Vec<TensorSpec>,
    execute: impl Fn(FloatTensor<B>, FloatTensor<B>, IntTensor<B>) -> Vec<FloatTensor<B>> + Send + Sync + 'static,
) -> Vec<Lazy<B>> {
    register::<B>(id, vec![student, teacher, labels], outputs, move |irs, handles| {
        let [s, t, labels] = irs else { unreachable!("three inputs registered") };
        execute(handles.get_float_tensor::<B>(s), handles.get_float_tensor::<B>(t), handles.get_int_tensor::<B>(labels))
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

    fn pkd_forward(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        levels: PkdLevels,
        config: PkdConfig,
    ) -> FloatTensor<Self> {
        let specs = vec![loss::<B>(&student)];
        single(lazy::<B, 2>("kd_pkd_forward", [student, teacher], specs, move |[s, t]| {
            vec![B::pkd_forward(s, t, levels.clone(), config)]
        }))
    }

    fn pkd_forward_backward(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        levels: PkdLevels,
        config: PkdConfig,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let specs = vec![loss::<B>(&student), grad::<B>(&student)];
        loss_and_grad(lazy::<B, 2>("kd_pkd_forward_backward", [student, teacher], specs, move |[s, t]| {
            let (loss, gs) = B::pkd_forward_backward(s, t, levels.clone(), config);
            vec![loss, gs]
        }))
    }

    fn ifvd_forward(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        labels: IntTensor<Self>,
        config: IfvdConfig,
    ) -> FloatTensor<Self> {
        let specs = vec![loss::<B>(&student)];
        single(lazy_labelled::<B>("kd_ifvd_forward", student, teacher, labels, specs, move |s, t, labels| {
            vec![B::ifvd_forward(s, t, labels, config)]
        }))
    }

    fn ifvd_forward_backward(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        labels: IntTensor<Self>,
        config: IfvdConfig,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let specs = vec![loss::<B>(&student), grad::<B>(&student)];
        loss_and_grad(lazy_labelled::<B>(
            "kd_ifvd_forward_backward",
            student,
            teacher,
            labels,
            specs,
            move |s, t, labels| {
                let (loss, gs) = B::ifvd_forward_backward(s, t, labels, config);
                vec![loss, gs]
            },
        ))
    }

    fn cwt_forward(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        params: FloatTensor<Self>,
        setup: CwtSetup,
    ) -> FloatTensor<Self> {
        let specs = vec![loss::<B>(&student)];
        single(lazy::<B, 3>("kd_cwt_forward", [student, teacher, params], specs, move |[s, t, p]| {
            vec![B::cwt_forward(s, t, p, setup)]
        }))
    }

    fn cwt_forward_backward(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        params: FloatTensor<Self>,
        setup: CwtSetup,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let specs = vec![loss::<B>(&student), grad::<B>(&student), grad::<B>(&params)];
        let out = lazy::<B, 3>("kd_cwt_forward_backward", [student, teacher, params], specs, move |[s, t, p]| {
            let (loss, grad_student, grad_params) = B::cwt_forward_backward(s, t, p, setup);
            vec![loss, grad_student, grad_params]
        });
        let mut out = out.into_iter();
        let mut next = || out.next().expect("CWT registers the loss and two gradients");
        (next(), next(), next())
    }

    fn semckd_forward(
        maps: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        params: FloatTensor<Self>,
        layers: SemckdLayers,
        config: SemckdConfig,
    ) -> FloatTensor<Self> {
        let specs = vec![loss::<B>(&maps)];
        single(lazy::<B, 3>("kd_semckd_forward", [maps, teacher, params], specs, move |[m, t, p]| {
            vec![B::semckd_forward(m, t, p, layers.clone(), config)]
        }))
    }

    fn semckd_forward_backward(
        maps: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        params: FloatTensor<Self>,
        layers: SemckdLayers,
        config: SemckdConfig,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let specs = vec![loss::<B>(&maps), grad::<B>(&maps), grad::<B>(&params)];
        let out = lazy::<B, 3>("kd_semckd_forward_backward", [maps, teacher, params], specs, move |[m, t, p]| {
            let (loss, grad_maps, grad_params) = B::semckd_forward_backward(m, t, p, layers.clone(), config);
            vec![loss, grad_maps, grad_params]
        });
        let mut out = out.into_iter();
        let mut next = || out.next().expect("SemCKD registers the loss and two packed gradients");
        (next(), next(), next())
    }
}
