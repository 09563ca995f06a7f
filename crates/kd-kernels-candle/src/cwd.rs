//! CWD as a candle op.

use kd_kernels::cwd::{CwdConfig, CwdCpu};

super::pair_loss_adapter! {
    /// Channel-wise distillation ([`kd_kernels::cwd`]) as a candle op: `loss(student, teacher)` is an f32 scalar
    /// whose backward pass writes d loss / d student (and d loss / d teacher with `config.teacher_grad`).
    Cwd {
        cpu: CwdCpu,
        config: CwdConfig,
        cuda: kd_kernels::cwd::CwdCuda,
        op: "kd-kernels-cwd",
        teacher_grad_if: teacher_grad,
    }
}
