//! f64 references shared by the op tests (`tests/cpu_ops.rs` for the CPU backend,
//! `tests/emu_ops.rs` for the emulated kernels): one definition of what each op computes.
//! Shapes: x [n, i], w [o, i], bias [o], dy [n, o]; sums run in ascending index order.

/// y[s, q] = sum_j x[s, j] w[q, j] + bias[q].
pub fn linear_forward(
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    n: usize,
    i: usize,
    o: usize,
) -> Vec<f64> {
    (0..n * o)
        .map(|k| {
            (0..i)
                .map(|j| x[k / o * i + j] as f64 * w[k % o * i + j] as f64)
                .sum::<f64>()
                + bias[k % o] as f64
        })
        .collect()
}

/// dx[s, j] = sum_q dy[s, q] w[q, j].
pub fn linear_backward_input(dy: &[f32], w: &[f32], n: usize, i: usize, o: usize) -> Vec<f64> {
    (0..n * i)
        .map(|k| {
            (0..o)
                .map(|q| dy[k / i * o + q] as f64 * w[q * i + k % i] as f64)
                .sum()
        })
        .collect()
}

/// (dw, db): dw[q, j] = sum_s dy[s, q] x[s, j], db[q] = sum_s dy[s, q].
pub fn linear_backward_params(
    x: &[f32],
    dy: &[f32],
    n: usize,
    i: usize,
    o: usize,
) -> (Vec<f64>, Vec<f64>) {
    let dw = (0..o * i)
        .map(|k| {
            (0..n)
                .map(|s| dy[s * o + k / i] as f64 * x[s * i + k % i] as f64)
                .sum()
        })
        .collect();
    let db = (0..o)
        .map(|q| (0..n).map(|s| dy[s * o + q] as f64).sum())
        .collect();
    (dw, db)
}
