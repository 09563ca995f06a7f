//! IFVD: features and integer labels, against burn's autograd and the CPU reference.

use super::*;
use burn::tensor::Int;
use kd_kernels::ifvd::{IfvdConfig, IfvdCpu};
use kd_kernels_burn::ifvd_loss;
use ndarray::ArrayView3;

/// Labels `[N, Hl, Wl]` at another resolution than the features: classes 0..3 of 5 (3 and 4 absent),
/// 255 (ignored) and -1 (ignored) among them.
fn ifvd_label_values(dims: [usize; 3]) -> Vec<i64> {
    logits([1, dims[0], dims[1], dims[2]], 9, 1.0)
        .into_iter()
        .map(|v| match ((v + 1.0) * 4.0) as i64 {
            0 => 255,
            1 => -1,
            k => (k - 2) % 3,
        })
        .collect()
}

fn int_labels<E: burn::tensor::Element>(values: Vec<E>, dims: [usize; 3], device: &Device) -> Tensor<3, Int> {
    Tensor::from_data(TensorData::new(values, dims), device)
}

/// The CPU reference's loss and gradient on the tensors' values.
fn ifvd_cpu(
    config: &IfvdConfig,
    student: &Tensor<4>,
    teacher: &Tensor<4>,
    labels: &[i64],
    dims: [usize; 3],
) -> (Vec<f64>, Vec<Vec<f64>>) {
    let (s, t) = (values(student.clone().detach()), values(teacher.clone()));
    let s = ArrayView4::from_shape(student.dims(), &s).unwrap();
    let t = ArrayView4::from_shape(teacher.dims(), &t).unwrap();
    let y = ArrayView3::from_shape(dims, labels).unwrap();
    let out = IfvdCpu::new(*config).unwrap().forward_backward(s, t, y).unwrap();
    (vec![out.loss], vec![out.grad_student.iter().copied().collect()])
}

#[test]
fn ifvd_matches_burn_autograd_and_the_cpu_reference() {
    let device = Device::ndarray().autodiff();
    let label_dims = [2, 9, 13];
    let labels = ifvd_label_values(label_dims);
    for (dtype, config) in
        DTYPES.into_iter().zip([IfvdConfig::new(5), IfvdConfig { num_classes: 3, loss_weight: 20.0 }])
    {
        let student = features([2, 4, 5, 7], 1, &device, dtype).require_grad();
        let teacher = features([2, 3, 5, 7], 2, &device, dtype);
        let y = int_labels(labels.clone(), label_dims, &device);
        let ours = ifvd_loss(student.clone(), teacher.clone(), y.clone(), &config).unwrap();
        let ours = loss_and_grads(ours, std::slice::from_ref(&student), dtype);
        let oracle = reference::ifvd_loss(student.clone(), teacher.clone(), y, &config);
        let oracle = loss_and_grads(oracle, std::slice::from_ref(&student), dtype);
        compare("ifvd vs burn autograd", dtype, ours.clone(), oracle);
        compare("ifvd vs IfvdCpu", dtype, ours, ifvd_cpu(&config, &student, &teacher, &labels, label_dims));
    }
}

/// The labels' integer type does not change the result; without autodiff the loss alone runs.
#[test]
fn ifvd_label_types_and_untracked_forward() {
    let config = IfvdConfig::new(4);
    let dims = [1, 6, 5];
    // No negative label, so that every type holds them all (255 stays the ignored value).
    let labels: Vec<i64> = ifvd_label_values(dims).into_iter().map(|v| if v < 0 { 255 } else { v }).collect();
    for device in [Device::ndarray(), Device::ndarray().autodiff()] {
        let student = features([1, 3, 6, 5], 3, &device, DType::F64);
        let teacher = features([1, 2, 6, 5], 4, &device, DType::F64);
        let loss = |y: Tensor<3, Int>| values(ifvd_loss(student.clone(), teacher.clone(), y, &config).unwrap());
        let wide = int_labels(labels.clone(), dims, &device);
        for dtype in [DType::I32, DType::U8] {
            let narrow = wide.clone().cast(dtype);
            assert_eq!(narrow.dtype(), dtype, "the labels are cast");
            assert_eq!(loss(narrow), loss(wide.clone()), "{dtype:?} labels give the i64 labels' loss");
        }
        let oracle = values(reference::ifvd_loss(student.clone(), teacher.clone(), wide.clone(), &config));
        assert_close("ifvd forward", loss(wide), oracle, limit(DType::F64, OutputKind::Loss));
    }
}

#[test]
fn ifvd_bad_inputs_are_typed_errors() {
    let device = Device::ndarray().autodiff();
    let config = IfvdConfig::new(3);
    let s = features([2, 3, 4, 5], 1, &device, DType::F32);
    let t = features([2, 2, 4, 5], 2, &device, DType::F32);
    let y = |dims: [usize; 3]| int_labels(vec![0i64; dims.iter().product()], dims, &device);
    assert!(ifvd_loss(s.clone(), t.clone(), y([2, 7, 3]), &config).is_ok());

    let zero = IfvdConfig::new(0);
    let err = ifvd_loss(s.clone(), t.clone(), y([2, 4, 5]), &zero).unwrap_err();
    assert!(matches!(err, KdError::InvalidParameter { name: "num_classes", .. }), "{err}");
    assert!(matches!(ifvd_loss(s.clone(), t.clone(), y([3, 4, 5]), &config), Err(KdError::ShapeMismatch { .. })));
    let other = features([2, 2, 5, 4], 2, &device, DType::F32);
    assert!(matches!(ifvd_loss(s.clone(), other, y([2, 4, 5]), &config), Err(KdError::ShapeMismatch { .. })));
    let wide = t.clone().cast(DType::F64);
    assert!(matches!(ifvd_loss(s.clone(), wide, y([2, 4, 5]), &config), Err(KdError::DTypeMismatch { .. })));
    let tracked = t.clone().require_grad() * 2.0;
    let err = ifvd_loss(s.clone(), tracked, y([2, 4, 5]), &config).unwrap_err();
    assert!(matches!(err, KdError::Unsupported { .. }) && err.to_string().contains("detach"), "{err}");
    let unsigned = y([2, 4, 5]).cast(DType::U32);
    assert!(matches!(ifvd_loss(s, t, unsigned, &config), Err(KdError::DTypeMismatch { .. })));
}
