//! Weak logit distillation loss (paper eq. 8-10, with the hinge on L_kd on the batch's mean).
//!
//! For student logits `s` and teacher logits `t`, both (B, K), integer targets `y` (B):
//! ```text
//! p_t   = softmax(t / tau),  log p_s = log_softmax(s / tau)
//! L_kd  = tau^2 * sum_b sum_k p_t (log p_t - log p_s) / B        (KL, 'batchmean')
//! L_ce  = mean_b  -log_softmax(s)[b, y_b]
//! L     = (1 - lam) * L_ce + lam * max(L_kd - e, 0)               (hinge on the batch's L_kd)
//! ```
//! Backward w.r.t. `s` only (the teacher is constant):
//! ```text
//! dL/ds = (1 - lam) * (softmax(s) - onehot(y)) / B  +  lam * [L_kd > e] * tau * (p_s - p_t) / B
//! ```
//! Log-softmax is libtorch's (max-shifted), so large logits do not overflow.
//!
//! The class indices are checked on the host for CPU targets (a clear `ValueError`), and on the
//! device for CUDA targets (`at::_assert_async`: no device-to-host copy, so no sync per step; a bad
//! index fails the stream with a device-side assertion).
use crate::aten::assert_async;
use crate::error::{Error, Result};
use crate::{type_err, value_err};
use std::cmp::Ordering;
use tch::{Device, Kind, Tensor};

/// Hyper-parameters of the loss; defaults are the paper's `e` and a temperature of 4.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WldConfig {
    pub lam: f64,
    pub e: f64,
    pub tau: f64,
}

impl Default for WldConfig {
    fn default() -> Self {
        Self { lam: 0.9, e: 0.005, tau: 4.0 }
    }
}

impl WldConfig {
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.lam) {
            return Err(value_err!("lam: expected a value in [0, 1], got {}", self.lam));
        }
        if !matches!(self.e.partial_cmp(&0.0), Some(Ordering::Greater | Ordering::Equal)) || !self.e.is_finite() {
            return Err(value_err!("e: expected a finite value >= 0, got {}", self.e));
        }
        if self.tau.partial_cmp(&0.0) != Some(Ordering::Greater) || !self.tau.is_finite() {
            return Err(value_err!("tau: expected a finite value > 0, got {}", self.tau));
        }
        Ok(())
    }
}

/// The loss and its two parts (for logging): each a 0-dim tensor of the logits' dtype.
pub struct WldOutput {
    pub loss: Tensor,
    pub ce: Tensor,
    pub kd: Tensor,
}

/// Validates the logits' and the target's shapes, dtypes and devices (no data is read); returns
/// `(batch, classes)`. The fake (meta) kernels call this too.
pub fn check_args(student: &Tensor, teacher: &Tensor, target: &Tensor) -> Result<(i64, i64)> {
    if student.dim() != 2 {
        return Err(value_err!(
            "student_logits: expected a 2-D (batch, classes) tensor, got shape {:?}",
            student.size()
        ));
    }
    if teacher.size() != student.size() {
        return Err(value_err!(
            "teacher_logits: expected the student's shape {:?}, got {:?}",
            student.size(),
            teacher.size()
        ));
    }
    for (name, t) in [("student_logits", student), ("teacher_logits", teacher)] {
        if !matches!(t.kind(), Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16) {
            return Err(type_err!("{name}: expected a floating-point tensor, got dtype {:?}", t.kind()));
        }
    }
    if !matches!(target.kind(), Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8) {
        return Err(type_err!("target: expected an integer class-index tensor, got dtype {:?}", target.kind()));
    }
    let (b, k) = (student.size()[0], student.size()[1]);
    if target.size() != [b] {
        return Err(value_err!("target: expected shape [{b}] (one class index per row), got {:?}", target.size()));
    }
    if b == 0 || k == 0 {
        return Err(value_err!(
            "student_logits: expected a non-empty batch and classes, got shape {:?}",
            student.size()
        ));
    }
    if teacher.device() != student.device() || target.device() != student.device() {
        return Err(Error::Runtime("teacher_logits and target must be on the student_logits' device".into()));
    }
    Ok((b, k))
}

/// Checks that every class index lies in `[0, k)`: on the host for CPU tensors, on the device
/// otherwise (no read-back).
fn check_classes(target: &Tensor, k: i64) -> Result<()> {
    if target.device() == Device::Cpu {
        let (lo, hi) = (target.f_min()?.f_int64_value(&[])?, target.f_max()?.f_int64_value(&[])?);
        if lo < 0 || hi >= k {
            return Err(value_err!("target: class indices must lie in [0, {k}), got values in [{lo}, {hi}]"));
        }
        return Ok(());
    }
    let ok = target.f_ge(0)?.f_logical_and(&target.f_lt(k)?)?.f_all()?;
    assert_async(&ok, &format!("target: class indices must lie in [0, {k})"))
}

fn check(student: &Tensor, teacher: &Tensor, target: &Tensor) -> Result<(i64, i64)> {
    let (b, k) = check_args(student, teacher, target)?;
    check_classes(target, k)?;
    Ok((b, k))
}

/// Computation dtype: float32 for half types (the loss is always accumulated in >= float32).
fn work_kind(k: Kind) -> Kind {
    if k == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    }
}

/// The tensors both passes share: logits in the work dtype, tempered log-probabilities, p_t, L_kd.
struct Common {
    s: Tensor,
    tgt: Tensor,
    log_ps: Tensor,
    pt: Tensor,
    kd: Tensor,
}

fn common(student: &Tensor, teacher: &Tensor, target: &Tensor, cfg: &WldConfig, b: i64) -> Result<Common> {
    let wk = work_kind(student.kind());
    let s = student.f_to_kind(wk)?;
    let log_ps = (&s / cfg.tau).f_log_softmax(1, None::<Kind>)?;
    let log_pt = (teacher.f_to_kind(wk)? / cfg.tau).f_log_softmax(1, None::<Kind>)?;
    let pt = log_pt.f_exp()?;
    let kd = pt.f_mul(&log_pt.f_sub(&log_ps)?)?.f_sum(None::<Kind>)? * (cfg.tau * cfg.tau / b as f64);
    Ok(Common { s, tgt: target.f_to_kind(Kind::Int64)?, log_ps, pt, kd })
}

pub fn forward(student: &Tensor, teacher: &Tensor, target: &Tensor, cfg: &WldConfig) -> Result<WldOutput> {
    cfg.validate()?;
    let (b, _) = check(student, teacher, target)?;
    tch::no_grad(|| {
        let Common { s, tgt, kd, .. } = common(student, teacher, target, cfg, b)?;
        let log_p = s.f_log_softmax(1, None::<Kind>)?;
        let ce = log_p.f_gather(1, &tgt.f_unsqueeze(1)?, false)?.f_mean(None::<Kind>)?.f_neg()?;
        let hinge = (&kd - cfg.e).f_clamp_min(0.0)?;
        let loss = &ce * (1.0 - cfg.lam) + hinge * cfg.lam;
        let k = student.kind();
        Ok(WldOutput { loss: loss.f_to_kind(k)?, ce: ce.f_to_kind(k)?, kd: kd.f_to_kind(k)? })
    })
}

/// Gradient of the loss w.r.t. the student logits, scaled by `grad` (a scalar tensor).
pub fn backward(grad: &Tensor, student: &Tensor, teacher: &Tensor, target: &Tensor, cfg: &WldConfig) -> Result<Tensor> {
    cfg.validate()?;
    let (b, k) = check(student, teacher, target)?;
    if grad.numel() != 1 {
        return Err(value_err!("grad: expected a scalar, got shape {:?}", grad.size()));
    }
    tch::no_grad(|| {
        let Common { s, tgt, log_ps, pt, kd } = common(student, teacher, target, cfg, b)?;
        let wk = s.kind();
        let active = kd.f_gt(cfg.e)?.f_to_kind(wk)?; // 0-dim, no host sync
        let onehot = Tensor::f_zeros([b, k], (wk, s.device()))?.f_scatter_value(1, &tgt.f_unsqueeze(1)?, 1.0)?;
        let d_ce = (s.f_softmax(1, None::<Kind>)? - onehot) * ((1.0 - cfg.lam) / b as f64);
        let d_kd = (log_ps.f_exp()? - pt) * (cfg.lam * cfg.tau / b as f64);
        let g = grad.f_to_kind(wk)?.f_reshape([] as [i64; 0])?;
        let ds = (d_ce + d_kd * active) * g;
        Ok(ds.f_to_kind(student.kind())?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_validation() {
        assert!(WldConfig::default().validate().is_ok());
        assert!(WldConfig { lam: 1.5, ..Default::default() }.validate().is_err());
        assert!(WldConfig { tau: 0.0, ..Default::default() }.validate().is_err());
        assert!(WldConfig { e: -1.0, ..Default::default() }.validate().is_err());
    }
}
