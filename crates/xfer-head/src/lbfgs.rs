//! Limited-memory BFGS with a strong-Wolfe line search (Nocedal & Wright,
//! *Numerical Optimization*, algorithms 7.4, 3.5 and 3.6), for the smooth convex
//! objectives of [`crate::objective`].
//!
//! Every evaluation returns the value and the gradient together (one pass over
//! the data). The stopping rules are linfa-logistic's (argmin's L-BFGS): the
//! gradient's L2 norm falls below the tolerance, the value stops changing, or the
//! iteration limit is reached.

use std::collections::VecDeque;

use crate::objective::{axpy, dot};

/// Correction pairs kept (linfa-logistic keeps 10).
const MEMORY: usize = 10;
/// Sufficient decrease (Armijo) constant.
const C1: f64 = 1e-4;
/// Curvature constant (0.9 is the usual choice for quasi-Newton methods).
const C2: f64 = 0.9;
/// Evaluations one line search may spend.
const MAX_LINE_SEARCH: usize = 30;

/// Something to minimise: the value at `x`, with the gradient written into `gradient`.
pub(crate) trait Smooth {
    /// The value at `x`; the gradient goes into `gradient` (same length as `x`).
    fn evaluate(&self, x: &[f64], gradient: &mut [f64]) -> f64;
}

impl Smooth for crate::objective::Objective<'_> {
    fn evaluate(&self, x: &[f64], gradient: &mut [f64]) -> f64 {
        self.value_and_gradient(x, gradient)
    }
}

/// When to stop.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stopping {
    /// Iteration limit.
    pub max_iterations: u64,
    /// Stop when the gradient's L2 norm is below this.
    pub gradient_tolerance: f64,
}

/// Where the minimiser stopped.
#[derive(Debug, Clone)]
pub(crate) struct Minimum {
    /// The parameters.
    pub x: Vec<f64>,
    /// The objective there.
    pub value: f64,
    /// The gradient's L2 norm there.
    pub gradient_norm: f64,
    /// Iterations taken.
    pub iterations: u64,
    /// Objective evaluations (value and gradient) made.
    pub evaluations: u64,
}

/// A point with its value and gradient.
#[derive(Clone)]
struct Point {
    x: Vec<f64>,
    value: f64,
    gradient: Vec<f64>,
}

/// Minimises `f` from `start`.
pub(crate) fn minimise(f: &impl Smooth, start: Vec<f64>, stopping: Stopping) -> Minimum {
    let mut gradient = vec![0.0; start.len()];
    let value = f.evaluate(&start, &mut gradient);
    let mut evaluations = 1;
    let mut current = Point {
        x: start,
        value,
        gradient,
    };
    let mut history: VecDeque<(Vec<f64>, Vec<f64>, f64)> = VecDeque::with_capacity(MEMORY);
    let mut iterations = 0;
    while iterations < stopping.max_iterations
        && norm(&current.gradient) >= stopping.gradient_tolerance
    {
        iterations += 1;
        let mut direction = two_loop(&current.gradient, &history);
        let mut slope = dot(&direction, &current.gradient);
        if slope.is_nan() || slope >= 0.0 {
            // not a descent direction (rounding): restart from steepest descent
            history.clear();
            direction = current.gradient.iter().map(|g| -g).collect();
            slope = -dot(&current.gradient, &current.gradient);
        }
        let first_step = if history.is_empty() {
            (1.0 / norm(&direction)).min(1.0)
        } else {
            1.0
        };
        let (next, spent) = line_search(f, &current, &direction, slope, first_step);
        evaluations += spent;
        let Some(next) = next else { break };
        let done = (current.value - next.value).abs() < f64::EPSILON;
        remember(&mut history, &current, &next);
        current = next;
        if done {
            break;
        }
    }
    Minimum {
        gradient_norm: norm(&current.gradient),
        value: current.value,
        x: current.x,
        iterations,
        evaluations,
    }
}

/// Adds the correction pair `(s, y)` of a step, when it has positive curvature.
fn remember(history: &mut VecDeque<(Vec<f64>, Vec<f64>, f64)>, from: &Point, to: &Point) {
    let s: Vec<f64> = to.x.iter().zip(&from.x).map(|(a, b)| a - b).collect();
    let y: Vec<f64> = to
        .gradient
        .iter()
        .zip(&from.gradient)
        .map(|(a, b)| a - b)
        .collect();
    let sy = dot(&s, &y);
    if sy > f64::EPSILON * dot(&y, &y) {
        if history.len() == MEMORY {
            history.pop_front();
        }
        history.push_back((s, y, sy));
    }
}

/// `−H·g` with the inverse-Hessian approximation of the correction pairs
/// (initial scaling `sᵀy / yᵀy` of the newest pair).
fn two_loop(gradient: &[f64], history: &VecDeque<(Vec<f64>, Vec<f64>, f64)>) -> Vec<f64> {
    let mut q: Vec<f64> = gradient.iter().map(|g| -g).collect();
    let mut alphas = Vec::with_capacity(history.len());
    for (s, y, sy) in history.iter().rev() {
        let a = dot(s, &q) / sy;
        axpy(-a, y, &mut q);
        alphas.push(a);
    }
    if let Some((_, y, sy)) = history.back() {
        let gamma = sy / dot(y, y);
        q.iter_mut().for_each(|v| *v *= gamma);
    }
    for ((s, y, sy), a) in history.iter().zip(alphas.iter().rev()) {
        let b = dot(y, &q) / sy;
        axpy(a - b, s, &mut q);
    }
    q
}

/// A step length satisfying the strong Wolfe conditions along `direction`
/// (slope `slope < 0` at the start), and the evaluations spent; `None` when
/// none was found (the objective cannot be decreased further in floating point).
fn line_search(
    f: &impl Smooth,
    start: &Point,
    direction: &[f64],
    slope: f64,
    first_step: f64,
) -> (Option<Point>, u64) {
    let probe = |step: f64| {
        let mut x = start.x.clone();
        axpy(step, direction, &mut x);
        let mut gradient = vec![0.0; x.len()];
        let value = f.evaluate(&x, &mut gradient);
        let d = dot(&gradient, direction);
        (Point { x, value, gradient }, d)
    };
    // bracket: (step, value, slope) at the low and high ends
    let mut low = (0.0, start.value, slope);
    let mut step = first_step;
    let mut high: Option<(f64, f64, f64)> = None;
    let mut best: Option<Point> = None;
    let mut spent = 0;
    for _ in 0..MAX_LINE_SEARCH {
        spent += 1;
        let (point, d) = probe(step);
        let sufficient = point.value <= start.value + C1 * step * slope;
        if !sufficient || point.value >= low.1 {
            high = Some((step, point.value, d));
        } else if d.abs() <= -C2 * slope {
            return (Some(point), spent);
        } else {
            // the minimum lies beyond this point, or between it and the low end
            let passed = match high {
                None => d >= 0.0,
                Some(h) => d * (h.0 - step) >= 0.0,
            };
            if passed {
                high = Some(low);
            }
            low = (step, point.value, d);
            best = Some(point);
        }
        step = match high {
            // expand until the minimum is bracketed
            None => step * 2.0,
            Some(h) if (h.0 - low.0).abs() <= 1e-12 * h.0.abs().max(low.0.abs()) => break,
            Some(h) => cubic_minimiser(low, h),
        };
    }
    // no strong-Wolfe point: take the best sufficient decrease found, if any
    (best, spent)
}

/// The minimiser of the cubic through two (step, value, slope) triples, kept
/// inside the middle 80 % of the interval (bisection when the cubic is degenerate).
fn cubic_minimiser(a: (f64, f64, f64), b: (f64, f64, f64)) -> f64 {
    let (lo, hi) = if a.0 < b.0 { (a.0, b.0) } else { (b.0, a.0) };
    let d1 = a.2 + b.2 - 3.0 * (a.1 - b.1) / (a.0 - b.0);
    let radicand = d1 * d1 - a.2 * b.2;
    let candidate = if radicand >= 0.0 {
        let d2 = (b.0 - a.0).signum() * radicand.sqrt();
        b.0 - (b.0 - a.0) * (b.2 + d2 - d1) / (b.2 - a.2 + 2.0 * d2)
    } else {
        f64::NAN
    };
    let margin = 0.1 * (hi - lo);
    if candidate.is_finite() && candidate > lo + margin && candidate < hi - margin {
        candidate
    } else {
        0.5 * (lo + hi)
    }
}

fn norm(v: &[f64]) -> f64 {
    dot(v, v).sqrt()
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)] // index loops mirror the formulas
mod tests {
    use super::*;

    /// The Rosenbrock function: a curved valley, minimum 0 at (1, 1).
    struct Rosenbrock;
    impl Smooth for Rosenbrock {
        fn evaluate(&self, x: &[f64], gradient: &mut [f64]) -> f64 {
            let (a, b) = (x[0], x[1]);
            gradient[0] = -2.0 * (1.0 - a) - 400.0 * a * (b - a * a);
            gradient[1] = 200.0 * (b - a * a);
            (1.0 - a).powi(2) + 100.0 * (b - a * a).powi(2)
        }
    }

    #[test]
    fn minimises_rosenbrock() {
        let stopping = Stopping {
            max_iterations: 200,
            gradient_tolerance: 1e-10,
        };
        let m = minimise(&Rosenbrock, vec![-1.2, 1.0], stopping);
        assert!(
            (m.x[0] - 1.0).abs() < 1e-8 && (m.x[1] - 1.0).abs() < 1e-8,
            "{m:?}"
        );
        assert!(m.gradient_norm < 1e-10 || m.value < 1e-20, "{m:?}");
    }

    /// A quadratic `½xᵀAx − bᵀx` with a known minimiser `A⁻¹b`.
    struct Quadratic;
    impl Smooth for Quadratic {
        fn evaluate(&self, x: &[f64], gradient: &mut [f64]) -> f64 {
            let diag = [1.0, 10.0, 100.0, 1000.0];
            let b = [1.0, 2.0, 3.0, 4.0];
            let mut value = 0.0;
            for i in 0..4 {
                gradient[i] = diag[i] * x[i] - b[i];
                value += 0.5 * diag[i] * x[i] * x[i] - b[i] * x[i];
            }
            value
        }
    }

    #[test]
    fn minimises_an_ill_conditioned_quadratic() {
        let stopping = Stopping {
            max_iterations: 100,
            gradient_tolerance: 1e-12,
        };
        let m = minimise(&Quadratic, vec![0.0; 4], stopping);
        // the value-change rule (|Δf| < ε) stops within about √(2ε/λ) = 2e-8 of the
        // minimiser along the flattest direction (λ = 1)
        for (x, expected) in m.x.iter().zip([1.0, 0.2, 0.03, 0.004]) {
            assert!((x - expected).abs() < 1e-7, "{m:?}");
        }
    }

    #[test]
    fn stops_at_the_iteration_limit() {
        let stopping = Stopping {
            max_iterations: 3,
            gradient_tolerance: 0.0,
        };
        let m = minimise(&Rosenbrock, vec![-1.2, 1.0], stopping);
        assert_eq!(m.iterations, 3);
    }
}
