//! The recorded PyTorch fixtures on the CPU reference, and the verifier's contract (`docs/fixtures.md`):
//! JSON lines with the documented keys, exit 0 / 1 / 2, a clear `"error"` line for every unusable file.

use crate::common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use kd_kernels::fixture::{Backend, Fixture, LossKind};
use kd_kernels::verify;
use kd_kernels::DType;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde_json::{json, Map, Value};

// ---------------------------------------------------------------------------------------------------------
// Reading the verifier's lines: serde_json, which is strict where the contract is (no NaN, no inf, one value).

type Line = Map<String, Value>;

/// Parses one line holding a JSON object.
fn parse_object(line: &str) -> Result<Line, String> {
    match serde_json::from_str::<Value>(line).map_err(|e| e.to_string())? {
        Value::Object(map) => Ok(map),
        other => Err(format!("not an object: {other}")),
    }
}

#[test]
fn json_reader_accepts_json_and_rejects_garbage() {
    let m = parse_object(r#"{"a": "x\"y", "b": 1.5e-3, "c": true, "d": null, "e": -2e0}"#).unwrap();
    assert_eq!(m["a"], json!("x\"y"));
    assert_eq!(m["b"].as_f64(), Some(1.5e-3));
    assert_eq!(m["c"], json!(true));
    assert_eq!(m["d"], Value::Null);
    assert_eq!(m["e"].as_f64(), Some(-2.0));
    for bad in [r#"{"a": NaN}"#, r#"{"a": inf}"#, r#"{"a": 1} x"#, r#"{"a" 1}"#, r#"{"a": .5}"#, "", "{", "[1]"] {
        assert!(parse_object(bad).is_err(), "accepted {bad:?}");
    }
}

// ---------------------------------------------------------------------------------------------------------
// Running the verifier.

/// Runs the verifier on the CPU backend only; returns the exit status and every output line, parsed.
fn run_verify(args: &[&Path]) -> (u8, Vec<Line>, String) {
    let args: Vec<String> = args.iter().map(|p| p.display().to_string()).collect();
    let mut out = Vec::new();
    let code = verify::run(&args, &[Backend::Cpu], &mut out);
    let text = String::from_utf8(out).expect("the verifier writes UTF-8");
    let lines = text
        .lines()
        .map(|l| parse_object(l).unwrap_or_else(|e| panic!("not a JSON object line: {l:?}: {e}")))
        .collect();
    (code, lines, text)
}

const CHECK_KEYS: [&str; 9] =
    ["file", "loss", "backend", "dtype", "output", "max_abs_err", "max_rel_err", "ref_max_abs", "pass"];

/// Asserts a check line has every key of fixtures.md with the right JSON type and consistent values.
fn assert_check_line(line: &Line) {
    for key in CHECK_KEYS {
        assert!(line.contains_key(key), "check line lacks `{key}`: {line:?}");
    }
    for key in ["file", "loss", "backend", "dtype", "output"] {
        assert!(line[key].as_str().is_some(), "`{key}` is not a string: {line:?}");
    }
    // A registered family's name (the crate's registry, `for_each_family!`, lists them).
    assert!(LossKind::parse(line["loss"].as_str().unwrap()).is_some(), "{line:?}");
    assert!(["cpu", "cuda"].contains(&line["backend"].as_str().unwrap()), "{line:?}");
    assert!(["f32", "f16", "bf16"].contains(&line["dtype"].as_str().unwrap()), "{line:?}");
    let output = line["output"].as_str().unwrap();
    assert!(
        output == "loss" || output == "attention" || output.starts_with("sim.") || output.starts_with("grad."),
        "{line:?}"
    );
    let Some(pass) = line["pass"].as_bool() else { panic!("`pass` is not a boolean: {line:?}") };
    let (abs, rel, refmax) = (line["max_abs_err"].as_f64(), line["max_rel_err"].as_f64(), line["ref_max_abs"].as_f64());
    let refmax = refmax.unwrap_or_else(|| panic!("`ref_max_abs` is not a number: {line:?}"));
    match (abs, rel) {
        (Some(abs), Some(rel)) => {
            let expect = abs / refmax.max(kd_kernels::tolerance::TINY);
            assert!((rel - expect).abs() <= 1e-12 * expect.abs().max(1e-300), "max_rel_err != abs/ref: {line:?}");
            if let Some(tol) = line.get("tolerance").and_then(Value::as_f64) {
                assert_eq!(pass, rel <= tol, "`pass` disagrees with max_rel_err <= tolerance: {line:?}");
            }
        }
        _ => assert!(!pass, "a NaN error (null) must not pass: {line:?}"),
    }
}

/// Asserts the lines are exactly one error line about `file`, whose message contains `needle`.
fn assert_single_error(case: &str, code: u8, lines: &[Line], file: &Path, needle: &str) {
    assert_eq!(code, 2, "{case}: exit status");
    assert_eq!(lines.len(), 1, "{case}: expected exactly one line, got {lines:?}");
    let line = &lines[0];
    assert_eq!(line.get("file").and_then(Value::as_str), Some(file.display().to_string().as_str()), "{case}: {line:?}");
    let msg = line.get("error").and_then(Value::as_str).unwrap_or_else(|| panic!("{case}: no `error`: {line:?}"));
    assert!(!msg.trim().is_empty(), "{case}: empty error message");
    assert!(msg.contains(needle), "{case}: error {msg:?} does not mention {needle:?}");
    assert!(!line.contains_key("pass"), "{case}: an error line is not a check: {line:?}");
}

// ---------------------------------------------------------------------------------------------------------
// Editable copies of fixture files.

#[derive(Debug, Clone)]
struct Tensor {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

#[derive(Debug, Clone)]
pub(crate) struct OwnedFile {
    metadata: HashMap<String, String>,
    tensors: BTreeMap<String, Tensor>,
}

impl OwnedFile {
    fn read(path: &Path) -> Self {
        let bytes = std::fs::read(path).expect("read fixture");
        let (_, header) = SafeTensors::read_metadata(&bytes).expect("fixture header");
        let metadata = header.metadata().clone().unwrap_or_default();
        let st = SafeTensors::deserialize(&bytes).expect("fixture");
        let tensors = st
            .tensors()
            .into_iter()
            .map(|(name, v)| (name, Tensor { dtype: v.dtype(), shape: v.shape().to_vec(), data: v.data().to_vec() }))
            .collect();
        OwnedFile { metadata, tensors }
    }

    fn bytes(&self) -> Vec<u8> {
        let views: Vec<(String, TensorView<'_>)> = self
            .tensors
            .iter()
            .map(|(name, t)| (name.clone(), TensorView::new(t.dtype, t.shape.clone(), &t.data).expect("valid view")))
            .collect();
        safetensors::serialize(views, Some(self.metadata.clone())).expect("serialize")
    }

    fn write(&self, path: &Path) {
        std::fs::write(path, self.bytes()).expect("write temp fixture");
    }

    pub(crate) fn set_meta(mut self, key: &str, value: &str) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    fn without_meta(mut self, key: &str) -> Self {
        self.metadata.remove(key);
        self
    }

    fn without_tensor(mut self, name: &str) -> Self {
        assert!(self.tensors.remove(name).is_some(), "{name} not in the base fixture");
        self
    }

    fn with_tensor(mut self, name: &str, tensor: Tensor) -> Self {
        self.tensors.insert(name.into(), tensor);
        self
    }

    fn f32_values(&self, name: &str) -> Vec<f32> {
        let t = &self.tensors[name];
        assert_eq!(t.dtype, Dtype::F32);
        t.data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
    }

    fn set_f32_values(&mut self, name: &str, values: &[f32]) {
        let t = self.tensors.get_mut(name).unwrap();
        assert_eq!(t.dtype, Dtype::F32);
        t.data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    }
}

fn f32_tensor(shape: &[usize], values: &[f32]) -> Tensor {
    assert_eq!(shape.iter().product::<usize>(), values.len());
    Tensor { dtype: Dtype::F32, shape: shape.to_vec(), data: values.iter().flat_map(|v| v.to_le_bytes()).collect() }
}

pub(crate) fn base_cwd() -> OwnedFile {
    OwnedFile::read(&common::fixture_dir().join("cwd_f32_1x3x5x7_tau1_w1.safetensors"))
}

pub(crate) fn base_pixel_kd() -> OwnedFile {
    OwnedFile::read(&common::fixture_dir().join("pixel_kd_f32_2x5x7x3_tau4_sum_w1.safetensors"))
}

/// `verify` refuses `file` alone with exit status 2 and one error line that mentions `needle` (`case` names it
/// in failures): a family's own bad files (its test module's) go through here.
pub(crate) fn assert_verify_refuses(case: &str, file: OwnedFile, needle: &str) {
    let dir = common::temp_dir(case);
    let path = dir.join("bad.safetensors");
    file.write(&path);
    let (code, lines, _) = run_verify(&[&path]);
    assert_single_error(case, code, &lines, &path, needle);
    let _ = std::fs::remove_dir_all(dir);
}

// ---------------------------------------------------------------------------------------------------------
// The fixtures themselves.

#[test]
fn every_fixture_passes_on_the_cpu_reference() {
    let mut failures = Vec::new();
    for path in common::fixture_files() {
        let fixture = Fixture::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let checks = verify::check(&fixture, &Backend::Cpu).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // Every reference output the file holds is checked, and nothing else.
        // `loss` first, then every other reference output (`grad.*`, `sim.*`, `attention`) in name order.
        let mut present: Vec<&str> =
            fixture.tensors.keys().map(String::as_str).filter(|n| reference_output(n)).collect();
        present.sort_by_key(|n| *n != "loss");
        let checked: Vec<&str> = checks.iter().map(|c| c.output.as_str()).collect();
        assert_eq!(checked, present, "{}: outputs checked", path.display());
        for c in &checks {
            if !c.pass() {
                failures.push(format!(
                    "{} {}: {:?} (tolerance {})",
                    path.display(),
                    c.output,
                    c.comparison,
                    c.tolerance
                ));
            }
        }
    }
    assert!(failures.is_empty(), "fixtures failing on the CPU reference:\n{}", failures.join("\n"));
}

#[test]
fn fixtures_cover_both_losses_all_dtypes_and_the_teacher_gradient() {
    let (mut losses, mut dtypes, mut teacher_grad) = (Vec::new(), Vec::new(), 0);
    let mut combos = Vec::new();
    for path in common::fixture_files() {
        let f = Fixture::load(&path).unwrap();
        let student = f.tensors.get("student").or_else(|| f.tensors.get("student.0")).expect("a student");
        let dtype = student.dtype.expect("a float student");
        losses.push(f.loss);
        dtypes.push(dtype);
        combos.push((f.loss, dtype));
        teacher_grad += f.tensors.contains_key("grad.teacher") as usize;
    }
    for loss in [LossKind::Cwd, LossKind::PixelKd] {
        assert!(losses.contains(&loss), "no fixture for {loss:?}");
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            assert!(combos.contains(&(loss, dtype)), "no {loss:?} fixture in {dtype}");
        }
    }
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        assert!(dtypes.contains(&dtype), "no {dtype} fixture");
    }
    assert!(teacher_grad >= 1, "no fixture has grad.teacher");
}

#[test]
fn fixture_from_bytes_equals_load() {
    let path = common::fixture_dir().join("cwd_f32_2x5x9x11_tau4_w3_teachergrad.safetensors");
    let a = Fixture::load(&path).unwrap();
    let b = Fixture::from_bytes(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(a.loss, b.loss);
    assert_eq!(a.metadata, b.metadata);
    assert_eq!(a.tensors.keys().collect::<Vec<_>>(), b.tensors.keys().collect::<Vec<_>>());
    assert!(a.tensors.contains_key("grad.teacher"));
}

#[test]
fn rewritten_fixture_still_passes() {
    // Guards the helpers the error tests build on: an unmodified round trip must verify cleanly.
    let dir = common::temp_dir("roundtrip");
    for (name, base) in [("cwd.safetensors", base_cwd()), ("pixel_kd.safetensors", base_pixel_kd())] {
        let path = dir.join(name);
        base.write(&path);
        let (code, lines, text) = run_verify(&[&path]);
        assert_eq!(code, 0, "{text}");
        assert_eq!(lines.len(), 2, "{text}");
        lines.iter().for_each(assert_check_line);
    }
    let _ = std::fs::remove_dir_all(dir);
}

// ---------------------------------------------------------------------------------------------------------
// The verifier's contract.

#[test]
fn verify_fixture_dir_on_cpu_exits_0_with_one_line_per_output() {
    let dir = common::fixture_dir();
    let (code, lines, text) = run_verify(&[&dir]);
    assert_eq!(code, 0, "{text}");
    let mut expected_lines = 0;
    let mut files_seen = std::collections::BTreeSet::new();
    for path in common::fixture_files() {
        let f = Fixture::load(&path).unwrap();
        expected_lines += f.tensors.keys().filter(|n| reference_output(n)).count();
        files_seen.insert(path.display().to_string());
    }
    assert_eq!(lines.len(), expected_lines, "{text}");
    for line in &lines {
        assert_check_line(line);
        assert_eq!(line["backend"], json!("cpu"));
        assert_eq!(line["pass"], json!(true), "{line:?}");
        assert!(files_seen.contains(line["file"].as_str().unwrap()), "unknown file in {line:?}");
        // The dtype reported is the one in the file name.
        let file = line["file"].as_str().unwrap();
        assert!(file.contains(&format!("_{}_", line["dtype"].as_str().unwrap())), "{line:?}");
        assert!(Path::new(file).file_name().unwrap().to_str().unwrap().starts_with(line["loss"].as_str().unwrap()));
    }
}

#[test]
fn verify_exit_2_for_every_unusable_file() {
    let dir = common::temp_dir("bad");
    let cwd = base_cwd();
    let pixel_kd = base_pixel_kd();
    let grad_dims = cwd.tensors["grad.student"].shape.clone();
    let numel: usize = grad_dims.iter().product();
    let zeros = vec![0.0f32; numel];

    enum Content {
        Bytes(Vec<u8>),
        Missing,
    }
    let text_file = Content::Bytes(b"this is not a safetensors file\n".to_vec());
    let full = cwd.bytes();
    let truncated = Content::Bytes(full[..full.len() / 2].to_vec());
    let f = |o: OwnedFile| Content::Bytes(o.bytes());

    let mut student_f16 = cwd.tensors["teacher"].clone();
    student_f16.dtype = Dtype::F16;
    student_f16.data.truncate(student_f16.data.len() / 2);
    let mut student_i32 = cwd.tensors["student"].clone();
    student_i32.dtype = Dtype::I32;

    let cases: Vec<(&str, Content, &str)> = vec![
        ("not safetensors", text_file, "not a safetensors file"),
        ("empty file", Content::Bytes(Vec::new()), "not a safetensors file"),
        ("truncated", truncated, "not a safetensors file"),
        ("missing file", Content::Missing, "cannot read"),
        ("no loss entry", f(cwd.clone().without_meta("loss")), "loss"),
        ("unknown loss", f(cwd.clone().set_meta("loss", "fitnet")), "unknown loss `fitnet`"),
        ("no format_version", f(cwd.clone().without_meta("format_version")), "format_version"),
        ("format_version 2", f(cwd.clone().set_meta("format_version", "2")), "format_version `2`"),
        ("missing student", f(cwd.clone().without_tensor("student")), "missing tensor `student`"),
        ("missing teacher", f(pixel_kd.clone().without_tensor("teacher")), "missing tensor `teacher`"),
        (
            "grad.student mis-shaped",
            f(cwd.clone().with_tensor(
                "grad.student",
                f32_tensor(&[grad_dims[0], grad_dims[1], numel / (grad_dims[0] * grad_dims[1]), 1], &zeros),
            )),
            "grad.student",
        ),
        ("grad.student flat", f(cwd.clone().with_tensor("grad.student", f32_tensor(&[numel], &zeros))), "grad.student"),
        ("loss not a scalar", f(cwd.clone().with_tensor("loss", f32_tensor(&[2], &[1.0, 2.0]))), "loss"),
        ("tau abc", f(cwd.clone().set_meta("tau", "abc")), "tau"),
        ("tau -1", f(cwd.clone().set_meta("tau", "-1")), "tau"),
        ("tau 0", f(pixel_kd.clone().set_meta("tau", "0")), "tau"),
        ("tau inf", f(pixel_kd.clone().set_meta("tau", "inf")), "tau"),
        ("tau NaN", f(cwd.clone().set_meta("tau", "NaN")), "tau"),
        ("loss_weight nan", f(pixel_kd.clone().set_meta("loss_weight", "nan")), "loss_weight"),
        ("loss_weight empty", f(cwd.clone().set_meta("loss_weight", "")), "loss_weight"),
        ("reduction bogus", f(pixel_kd.clone().set_meta("reduction", "average")), "reduction"),
        ("scale_tau2 yes", f(pixel_kd.clone().set_meta("scale_tau2", "yes")), "scale_tau2"),
        ("teacher shape differs", f(cwd.clone().with_tensor("teacher", f32_tensor(&[numel], &zeros))), "teacher"),
        ("student rank 3", f(cwd.clone().with_tensor("student", f32_tensor(&[1, 3, 35], &zeros))), "rank"),
        ("teacher f16, student f32", f(cwd.clone().with_tensor("teacher", student_f16)), "teacher"),
        (
            "student i32",
            f(cwd.clone().with_tensor("student", student_i32.clone()).with_tensor("teacher", student_i32)),
            "student",
        ),
        (
            "student empty",
            f(pixel_kd
                .clone()
                .with_tensor("student", f32_tensor(&[2, 0, 7, 3], &[]))
                .with_tensor("teacher", f32_tensor(&[2, 0, 7, 3], &[]))),
            "zero dimension",
        ),
        (
            "no reference output",
            f(cwd.clone().without_tensor("loss").without_tensor("grad.student")),
            "no reference output",
        ),
    ];

    let mut every_bad = Vec::new();
    for (i, (case, content, needle)) in cases.into_iter().enumerate() {
        let path = dir.join(format!("case{i:02}.safetensors"));
        if let Content::Bytes(b) = content {
            std::fs::write(&path, b).unwrap();
        }
        let (code, lines, _) = run_verify(&[&path]);
        assert_single_error(case, code, &lines, &path, needle);
        every_bad.push(path);
    }

    // All of them at once: one error line each, in order, and still exit 2.
    let refs: Vec<&Path> = every_bad.iter().map(PathBuf::as_path).collect();
    let (code, lines, text) = run_verify(&refs);
    assert_eq!(code, 2);
    assert_eq!(lines.len(), every_bad.len(), "{text}");
    for (line, path) in lines.iter().zip(&every_bad) {
        assert_eq!(line["file"].as_str(), Some(path.display().to_string().as_str()));
        assert!(line.contains_key("error"));
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn verify_exit_2_without_arguments_or_with_an_empty_directory() {
    let mut out = Vec::new();
    assert_eq!(verify::run(&[], &[Backend::Cpu], &mut out), 2);
    let text = String::from_utf8(out).unwrap();
    let line = parse_object(text.trim()).unwrap();
    assert!(line.contains_key("error"), "{text}");

    let dir = common::temp_dir("empty");
    let (code, lines, text) = run_verify(&[&dir]);
    assert_eq!(code, 2, "{text}");
    assert_eq!(lines.len(), 1);
    assert!(lines[0]["error"].as_str().unwrap().contains("no *.safetensors"), "{text}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn verify_exit_1_when_a_reference_is_perturbed() {
    let dir = common::temp_dir("perturbed");

    // The loss 1% off: the loss check fails, the gradient check still passes.
    let mut bad_loss = base_cwd();
    let loss = bad_loss.f32_values("loss");
    bad_loss.set_f32_values("loss", &[loss[0] * 1.01]);
    let p1 = dir.join("bad_loss.safetensors");
    bad_loss.write(&p1);
    let (code, lines, text) = run_verify(&[&p1]);
    assert_eq!(code, 1, "{text}");
    assert_eq!(lines.len(), 2, "{text}");
    lines.iter().for_each(assert_check_line);
    let by_output: HashMap<&str, &Value> = lines.iter().map(|l| (l["output"].as_str().unwrap(), &l["pass"])).collect();
    assert_eq!(by_output["loss"], &json!(false), "{text}");
    assert_eq!(by_output["grad.student"], &json!(true), "{text}");

    // One gradient element off by 1e-3 of the gradient's max: a relative error the f32 row (1e-4) rejects.
    let mut bad_grad = base_pixel_kd();
    let mut g = bad_grad.f32_values("grad.student");
    let gmax = g.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let mid = g.len() / 2;
    g[mid] += 1e-3 * gmax;
    bad_grad.set_f32_values("grad.student", &g);
    let p2 = dir.join("bad_grad.safetensors");
    bad_grad.write(&p2);
    let (code, lines, text) = run_verify(&[&p2]);
    assert_eq!(code, 1, "{text}");
    let failing: Vec<&str> =
        lines.iter().filter(|l| l["pass"] == json!(false)).map(|l| l["output"].as_str().unwrap()).collect();
    assert_eq!(failing, ["grad.student"], "{text}");

    // A NaN in the reference never passes.
    let mut nan_grad = base_cwd();
    let mut g = nan_grad.f32_values("grad.student");
    g[0] = f32::NAN;
    nan_grad.set_f32_values("grad.student", &g);
    let p3 = dir.join("nan_grad.safetensors");
    nan_grad.write(&p3);
    let (code, lines, text) = run_verify(&[&p3]);
    assert_eq!(code, 1, "{text}");
    assert!(lines.iter().any(|l| l["output"].as_str() == Some("grad.student") && l["pass"] == json!(false)), "{text}");

    // A good file next to a failing one: 1; next to an unusable one as well: 2 wins, and the good and
    // failing files are still checked.
    let good = common::fixture_dir().join("cwd_f32_1x3x5x7_tau4_w3.safetensors");
    let (code, _, text) = run_verify(&[&good, &p1]);
    assert_eq!(code, 1, "{text}");
    let unusable = dir.join("unusable.safetensors");
    std::fs::write(&unusable, b"garbage").unwrap();
    let (code, lines, text) = run_verify(&[&good, &unusable, &p1]);
    assert_eq!(code, 2, "{text}");
    assert_eq!(lines.len(), 2 + 1 + 2, "{text}");
    assert!(lines[2].contains_key("error"), "{text}");
    assert_eq!(lines[3]["output"], json!("loss"), "{text}");
    assert_eq!(lines[3]["pass"], json!(false), "{text}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn verify_skip_line_and_available_backends() {
    let line = parse_object(&verify::skip_line("cuda", "no \"driver\"\nhere")).unwrap();
    assert_eq!(line["backend"], json!("cuda"));
    assert_eq!(line["skipped"], json!(true));
    assert_eq!(line["reason"], json!("no \"driver\"\nhere"));

    let (backends, skipped) = verify::available_backends();
    assert_eq!(backends[0].name(), "cpu");
    match skipped {
        Some(reason) => {
            assert_eq!(backends.len(), 1);
            assert!(!reason.is_empty());
        }
        None => assert_eq!(backends.iter().map(Backend::name).collect::<Vec<_>>(), ["cpu", "cuda"]),
    }
}

/// The outputs the verifier checks: `loss`, every `grad.*`, and SemCKD's `attention`.
fn reference_output(name: &str) -> bool {
    name == "loss" || name == "attention" || name.starts_with("sim.") || name.starts_with("grad.")
}

// ---------------------------------------------------------------------------------------------------------
// The synthetic cases of the quickstart: one per registered family, from the registry.

#[test]
fn every_family_has_an_example_that_runs_on_the_cpu() {
    for &kind in LossKind::ALL {
        let case = kd_kernels::fixture::example(kind, true, 5);
        assert_eq!(case.fixture.loss, kind);
        let out = verify::compute(&case.fixture, &Backend::Cpu).unwrap_or_else(|e| panic!("{}: {e}", kind.name()));
        let loss = out.get("loss").unwrap_or_else(|| panic!("{}: no loss", kind.name()));
        assert!(loss.values.len() == 1 && loss.values[0].is_finite(), "{}: loss {:?}", kind.name(), loss.values);
        let grads: Vec<f64> =
            out.iter().filter(|(n, _)| n.starts_with("grad.student")).flat_map(|(_, o)| o.values.clone()).collect();
        assert!(!grads.is_empty(), "{}: no student gradient", kind.name());
        assert!(grads.iter().all(|g| g.is_finite()), "{}: a non-finite gradient", kind.name());
        assert!(grads.iter().any(|&g| g != 0.0), "{}: the student gradient is all zero", kind.name());
        let again = kd_kernels::fixture::example(kind, true, 5);
        let other = kd_kernels::fixture::example(kind, true, 6);
        let values =
            |c: &kd_kernels::fixture::Example| verify::compute(&c.fixture, &Backend::Cpu).unwrap()["loss"].values[0];
        assert_eq!(
            values(&again).to_bits(),
            loss.values[0].to_bits(),
            "{}: the seed does not fix the case",
            kind.name()
        );
        assert_ne!(values(&other), loss.values[0], "{}: the seed does not change the case", kind.name());
    }
}
