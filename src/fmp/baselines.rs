//! The defenses FMP is compared with, on the same engine (selections are pruned with `prune::apply`, and
//! fine-tuned with `finetune::finetune`, like FMP's):
//! - fine-tuning only: no pruning (an empty selection);
//! - Fine-Pruning (Liu et al. 2018): prune the maps least active on clean data, then fine-tune. Activity of a
//!   map = mean |A_l(x)[:, c]| of the raw conv output over clean images (`controls::mean_activation`); per conv
//!   the same count as FMP (floor(C/p)) lowest are pruned. (The original prunes the last conv layer only,
//!   until clean accuracy drops; here every conv, with FMP's counts, so the two differ only in the ranking.)
//! - the trigger oracle (a control, not a defense: it needs the trigger): per conv the same count of the maps
//!   most sensitive to the trigger (`oracle_selection`);
//! - CLP (Zheng et al. 2022, data-free): the upper bound of channel c's Lipschitz constant is the largest
//!   singular value of its filter reshaped to [C_in, kh*kw], times |gamma_c / sqrt(var_c + eps)| of the BN
//!   that consumes it alone (`ConvInfo::pruned_bn`: a block's conv1 and its bn2; the residual-stream convs
//!   have none, so their bound is the filter's). Per conv, maps whose bound exceeds mean + u * std (sample
//!   std, as `torch.std`) are pruned; u = 3 by default. CLP does not fine-tune.
use super::attacks::Attack;
use super::controls::{mean_activation, top_k, trigger_sensitivity};
use super::LabeledImages;
use crate::error::{Error, Result};
use crate::model::PreActResNet18;
use crate::weights::BN_EPS;

/// Per conv, the `counts[i]` maps with the lowest mean |activation| on `images` (ties: lower index).
pub fn fine_pruning_selection(
    model: &PreActResNet18,
    images: &LabeledImages,
    counts: &[usize],
    batch: usize,
) -> Result<Vec<(usize, usize)>> {
    let act = mean_activation(model, images, batch)?;
    per_conv("fine-pruning", &act, counts, Pick::Lowest)
}

/// The trigger oracle, a control that needs the attack: per conv, the `counts[i]` maps most sensitive to
/// the trigger (mean |A(x + trigger) - A(x)| over clean `images`; ties: lower index). What pruning the
/// right maps at a defense's budget can do, against which a data-only ranking is measured.
pub fn oracle_selection(
    model: &PreActResNet18,
    images: &LabeledImages,
    attack: &Attack,
    counts: &[usize],
    batch: usize,
) -> Result<Vec<(usize, usize)>> {
    let sens = trigger_sensitivity(model, images, attack, batch)?;
    per_conv("oracle", &sens, counts, Pick::Highest)
}

/// Which end of a conv's per-map values a selection takes.
enum Pick {
    Lowest,
    Highest,
}

/// Per conv i, the `counts[i]` maps at the `pick` end of `values[i]` (ties: lower index), as sorted
/// (conv, map) pairs; `what` names the selection in the error for mismatched lengths.
fn per_conv(
    what: &str,
    values: &[Vec<f32>],
    counts: &[usize],
    pick: Pick,
) -> Result<Vec<(usize, usize)>> {
    if counts.len() != values.len() {
        return Err(Error::InvalidArgument(format!(
            "{what}: {} counts for {} convs",
            counts.len(),
            values.len()
        )));
    }
    let mut out = Vec::new();
    for (i, (v, &k)) in values.iter().zip(counts).enumerate() {
        let maps = match pick {
            Pick::Highest => top_k(v, k),
            Pick::Lowest => {
                let mut order: Vec<usize> = (0..v.len()).collect();
                order.sort_by(|&x, &y| v[x].total_cmp(&v[y]).then(x.cmp(&y)));
                order.truncate(k);
                order
            }
        };
        out.extend(maps.into_iter().map(|c| (i, c)));
    }
    out.sort_unstable();
    Ok(out)
}

/// Largest singular value of a row-major [rows, cols] matrix (power iteration on the smaller Gram matrix,
/// f64).
pub fn spectral_norm(m: &[f32], rows: usize, cols: usize) -> f64 {
    assert_eq!(m.len(), rows * cols);
    if rows == 0 || cols == 0 {
        return 0.0;
    }
    // G = M^T M (cols x cols) or M M^T (rows x rows), whichever is smaller
    let (n, g) = if cols <= rows {
        let mut g = vec![0f64; cols * cols];
        for r in 0..rows {
            let row = &m[r * cols..(r + 1) * cols];
            for i in 0..cols {
                for j in 0..cols {
                    g[i * cols + j] += row[i] as f64 * row[j] as f64;
                }
            }
        }
        (cols, g)
    } else {
        let mut g = vec![0f64; rows * rows];
        for i in 0..rows {
            for j in 0..rows {
                g[i * rows + j] = (0..cols)
                    .map(|k| m[i * cols + k] as f64 * m[j * cols + k] as f64)
                    .sum();
            }
        }
        (rows, g)
    };
    let mut v = vec![1.0f64; n];
    let mut lambda = 0.0;
    for _ in 0..500 {
        let w: Vec<f64> = (0..n)
            .map(|i| (0..n).map(|j| g[i * n + j] * v[j]).sum())
            .collect();
        let norm = w.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm == 0.0 {
            return 0.0;
        }
        let next = norm / v.iter().map(|x| x * x).sum::<f64>().sqrt();
        v = w.iter().map(|x| x / norm).collect();
        if (next - lambda).abs() <= 1e-12 * next {
            lambda = next;
            break;
        }
        lambda = next;
    }
    lambda.sqrt()
}

/// Per conv, per output channel: CLP's upper bound of the channel Lipschitz constant.
pub fn channel_lipschitz(model: &PreActResNet18) -> Result<Vec<Vec<f32>>> {
    let be = model.backend();
    let mut out = Vec::with_capacity(model.convs().len());
    for (i, cv) in model.convs().iter().enumerate() {
        let w = be.to_host(model.conv_weight(i))?;
        let shape = model.conv_weight(i).shape().to_vec(); // [C_out, C_in, kh, kw]
        let (cout, cin, kk) = (shape[0], shape[1], shape[2] * shape[3]);
        let bn_scale: Option<Vec<f32>> = match &cv.pruned_bn {
            Some(name) => {
                let bn = model
                    .bns
                    .iter()
                    .find(|b| &b.name == name)
                    .expect("pruned_bn names a BN of the model");
                let g = be.to_host(&bn.gamma)?;
                let v = be.to_host(&bn.running_var)?;
                Some(
                    g.iter()
                        .zip(&v)
                        .map(|(g, v)| (g / (v + BN_EPS).sqrt()).abs())
                        .collect(),
                )
            }
            None => None,
        };
        let per = cin * kk;
        out.push(
            (0..cout)
                .map(|c| {
                    let s = spectral_norm(&w[c * per..(c + 1) * per], cin, kk) as f32;
                    s * bn_scale.as_ref().map_or(1.0, |b| b[c])
                })
                .collect(),
        );
    }
    Ok(out)
}

/// Indices whose value exceeds mean + u * sample std of `v`.
pub fn outliers(v: &[f32], u: f32) -> Vec<usize> {
    let n = v.len();
    if n < 2 {
        return Vec::new();
    }
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
    let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let thr = mean + u as f64 * var.sqrt();
    (0..n).filter(|&i| v[i] as f64 > thr).collect()
}

/// CLP's selection: per conv, the maps whose channel Lipschitz bound is an outlier (> mean + u * std).
pub fn clp_selection(model: &PreActResNet18, u: f32) -> Result<Vec<(usize, usize)>> {
    if !u.is_finite() {
        return Err(Error::InvalidArgument(format!(
            "--clp-u {u} must be a finite number"
        )));
    }
    let lips = channel_lipschitz(model)?;
    let mut out = Vec::new();
    for (i, l) in lips.iter().enumerate() {
        out.extend(outliers(l, u).into_iter().map(|c| (i, c)));
    }
    Ok(out)
}

/// Per-conv counts of a selection (execution order).
pub fn counts_of(model: &PreActResNet18, pruned: &[(usize, usize)]) -> Vec<usize> {
    let mut c = vec![0; model.convs().len()];
    for &(i, _) in pruned {
        c[i] += 1;
    }
    c
}
