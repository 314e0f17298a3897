"""The course's figures, in matplotlib.

Each function draws one kind of figure the lessons use more than once, on the ``ax`` (or
figure) it is given or on a new one, and returns the :class:`~matplotlib.axes.Axes` (or the
:class:`~matplotlib.figure.Figure` for grids) so a notebook can add titles, lines or
annotations afterwards. Tensors may be torch tensors, numpy arrays or nested lists.

* :func:`attention_heatmap` -- one attention matrix, queries down, keys across;
* :func:`attention_heads` -- a grid of heatmaps, one per head (and layer);
* :func:`position_pattern` -- a (positions x channels) table or a (positions x positions)
  similarity matrix;
* :func:`lines` -- several named curves over a shared x axis (cost vs length, similarity vs
  distance, ...);
* :func:`loss_curve` -- training (and validation) loss over steps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["attention_heatmap", "attention_heads", "lines", "loss_curve", "position_pattern", "to_numpy"]


def to_numpy(x: Any) -> np.ndarray:
    """A float numpy array from a torch tensor (any device, with or without grad), an array or a list."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=float)


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=figsize)
    return ax


def _labels(tokens: Sequence[str] | None, n: int) -> list[str] | None:
    if tokens is None:
        return None
    tokens = [str(t) for t in tokens]
    if len(tokens) != n:
        raise ValueError(f"{len(tokens)} token labels for a matrix of size {n}")
    # make whitespace visible: a label " the" would otherwise look like "the"
    return [t.replace(" ", "·").replace("\n", "⏎").replace("\t", "⇥") for t in tokens]


def attention_heatmap(weights: Any, tokens: Sequence[str] | None = None, ax: Axes | None = None,
                      title: str | None = None, key_tokens: Sequence[str] | None = None,
                      annotate: bool | None = None, cmap: str = "viridis",
                      colorbar: bool = True, vmax: float | None = None,
                      fontsize: float | None = None) -> Axes:
    """Draw one attention matrix: row ``i`` is query ``i``, column ``j`` how much it looks at key ``j``.

    ``weights`` is (T_q, T_k); ``tokens`` labels the queries (and the keys, unless
    ``key_tokens`` is given). Spaces in labels are drawn as ``·``. ``annotate`` writes the
    values in the cells (default: when the matrix is at most 8 x 8). ``fontsize`` of the token
    labels defaults to 8, or 6 for more than 30 tokens. Returns the Axes.
    """
    w = to_numpy(weights)
    if w.ndim != 2:
        raise ValueError(f"weights must be a 2-D (queries, keys) matrix, got shape {w.shape}")
    ax = _axes(ax, (4.5, 4.0))
    im = ax.imshow(w, cmap=cmap, vmin=0.0, vmax=vmax if vmax is not None else max(float(w.max()), 1e-9),
                   aspect="auto", interpolation="nearest")
    rows = _labels(tokens, w.shape[0])
    cols = _labels(key_tokens if key_tokens is not None else tokens, w.shape[1])
    if fontsize is None:
        fontsize = 8 if max(w.shape) <= 30 else 6
    if rows is not None:
        ax.set_yticks(range(len(rows)), rows, fontsize=fontsize)
    if cols is not None:
        ax.set_xticks(range(len(cols)), cols, fontsize=fontsize, rotation=90)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    if annotate is None:
        annotate = max(w.shape) <= 8
    if annotate:
        top = w.max() if w.size else 1.0
        for i in range(w.shape[0]):
            for j in range(w.shape[1]):
                ax.text(j, i, f"{w[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if w[i, j] > 0.6 * top else "white")
    if title:
        ax.set_title(title)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return ax


def attention_heads(weights: Any, tokens: Sequence[str] | None = None, titles: Sequence[str] | None = None,
                    ncols: int | None = None, size: float = 3.2, suptitle: str | None = None) -> Figure:
    """A grid of attention heatmaps, one per head: ``weights`` is (n, T, T) or (layers, heads, T, T).

    With 4-D weights the grid has one row per layer and panels are titled "layer l, head h".
    Returns the Figure.
    """
    import matplotlib.pyplot as plt

    w = to_numpy(weights)
    if w.ndim == 4:
        n_layer, n_head = w.shape[:2]
        titles = titles or [f"layer {i}, head {h}" for i in range(n_layer) for h in range(n_head)]
        ncols = ncols or n_head
        w = w.reshape(-1, *w.shape[2:])
    elif w.ndim == 3:
        titles = titles or [f"head {h}" for h in range(w.shape[0])]
    else:
        raise ValueError(f"weights must be (heads, T, T) or (layers, heads, T, T), got shape {w.shape}")
    n = w.shape[0]
    ncols = ncols or min(n, 4)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False,
                             constrained_layout=True)
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.axis("off")
            continue
        attention_heatmap(w[k], tokens, ax=ax, title=titles[k], colorbar=False, annotate=False)
        if k % ncols:
            ax.set_ylabel("")
        if k < n - ncols:
            ax.set_xlabel("")
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def position_pattern(matrix: Any, ax: Axes | None = None, title: str = "position encoding",
                     xlabel: str = "channel", ylabel: str = "position", cmap: str = "RdBu_r",
                     symmetric: bool = True, colorbar: bool = True) -> Axes:
    """Draw a positions x channels table (sinusoidal, learned, rotary angles) or a
    positions x positions similarity matrix as a heatmap.

    ``symmetric`` centres the colour scale on 0 (blue negative, red positive). Returns the Axes.
    """
    m = to_numpy(matrix)
    if m.ndim != 2:
        raise ValueError(f"matrix must be 2-D, got shape {m.shape}")
    ax = _axes(ax, (6.0, 3.5))
    if symmetric:
        lim = float(np.abs(m).max()) or 1.0
        vmin, vmax = -lim, lim
    else:
        vmin, vmax = float(m.min()), float(m.max())
    im = ax.imshow(m, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return ax


def lines(x: Any, series: Mapping[str, Any], ax: Axes | None = None, title: str | None = None,
          xlabel: str = "", ylabel: str = "", logx: bool = False, logy: bool = False,
          marker: str | None = "o", styles: Mapping[str, str] | None = None) -> Axes:
    """Several named curves sharing one x axis (e.g. time of two attention kernels vs sequence
    length). ``series`` maps a legend label to its y values; ``styles`` optionally maps a label to
    a matplotlib format string such as ``"--"``. Returns the Axes."""
    ax = _axes(ax, (5.5, 3.5))
    xs = to_numpy(x)
    for label, ys in series.items():
        fmt = (styles or {}).get(label)
        kw = {} if fmt else {"marker": marker, "markersize": 4}
        ax.plot(xs, to_numpy(ys), *([fmt] if fmt else []), label=label, **kw)
    if logx:
        ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax


def loss_curve(steps: Any, losses: Any, ax: Axes | None = None, val_steps: Any = None,
               val_losses: Any = None, title: str = "loss", smooth: int = 0, logy: bool = False) -> Axes:
    """Training loss over steps (optionally a moving average over ``smooth`` steps) and, when
    given, validation loss at ``val_steps``. Returns the Axes."""
    ax = _axes(ax, (5.5, 3.5))
    xs, ys = to_numpy(steps), to_numpy(losses)
    ax.plot(xs, ys, alpha=0.35 if smooth > 1 else 1.0, label="train")
    if smooth > 1 and len(ys) >= smooth:
        kernel = np.ones(smooth) / smooth
        ax.plot(xs[smooth - 1:], np.convolve(ys, kernel, mode="valid"), label=f"train (mean of {smooth})")
    if val_losses is not None:
        ax.plot(to_numpy(val_steps), to_numpy(val_losses), "o-", label="validation")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax
