"""A line plot of the training loss drawn with braille dots (2 x 4 dots per cell)."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

# Bit of each dot inside a braille cell, indexed [row][column].
_DOTS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))
_BRAILLE = 0x2800
_LABEL_WIDTH = 8


def _label(value: float) -> str:
    return f"{value:.4g}".rjust(_LABEL_WIDTH - 1)[: _LABEL_WIDTH - 1]


def braille_lines(points: list[tuple[float, float]], width: int, height: int) -> list[str]:
    """``height`` strings of ``width`` braille cells drawing ``points`` (x, y) joined by lines.

    The x range maps onto the full width and the y range onto the full height (larger y higher).

    >>> braille_lines([(0, 0), (1, 1)], 1, 1)
    ['⡜']
    """
    width, height = max(width, 1), max(height, 1)
    dots_x, dots_y = width * 2, height * 4
    cells = [[0] * width for _ in range(height)]
    if not points:
        return ["".join(chr(_BRAILLE) for _ in row) for row in cells]
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)

    def scale(x: float, y: float) -> tuple[int, int]:
        dx = 0 if x1 == x0 else round((x - x0) / (x1 - x0) * (dots_x - 1))
        dy = (dots_y - 1) // 2 if y1 == y0 else round((y1 - y) / (y1 - y0) * (dots_y - 1))
        return dx, dy

    def plot(dx: int, dy: int) -> None:
        cells[dy // 4][dx // 2] |= _DOTS[dy % 4][dx % 2]

    scaled = [scale(x, y) for x, y in points]
    plot(*scaled[0])
    for (ax, ay), (bx, by) in zip(scaled, scaled[1:]):
        steps = max(abs(bx - ax), abs(by - ay), 1)
        for i in range(steps + 1):
            plot(round(ax + (bx - ax) * i / steps), round(ay + (by - ay) * i / steps))
    return ["".join(chr(_BRAILLE + bits) for bits in row) for row in cells]


class LossPlot(Widget):
    """The loss so far against the step, with the y range on the left and the step range below."""

    COMPONENT_CLASSES = {"loss-plot--line", "loss-plot--axis"}

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.points: list[tuple[float, float]] = []

    def add(self, step: float, value: float) -> None:
        """Add one (step, loss) point and redraw; a step seen before (a run resumed from an earlier
        checkpoint) replaces the points from there on."""
        self.points = [point for point in self.points if point[0] < step]
        self.points.append((float(step), float(value)))
        self.refresh()

    def clear(self) -> None:
        self.points = []
        self.refresh()

    def render(self) -> Text:
        width, height = self.size.width, self.size.height
        axis = self.get_component_rich_style("loss-plot--axis")
        line = self.get_component_rich_style("loss-plot--line")
        if not self.points:
            return Text("waiting for the first loss value…", style=axis)
        plot_height = max(height - 1, 1)
        rows = braille_lines(self.points, max(width - _LABEL_WIDTH, 1), plot_height)
        ys = [p[1] for p in self.points]
        text = Text(no_wrap=True)
        for i, row in enumerate(rows):
            label = _label(max(ys)) if i == 0 else _label(min(ys)) if i == plot_height - 1 else ""
            text.append(label.ljust(_LABEL_WIDTH - 1) + "┤", style=axis)
            text.append(row + ("\n" if i < plot_height - 1 else ""), style=line)
        if height > 1:
            first, last = self.points[0][0], self.points[-1][0]
            span = f"step {first:g}"
            end = f"{last:g}"
            gap = max(width - _LABEL_WIDTH - len(span) - len(end), 1)
            text.append("\n" + " " * _LABEL_WIDTH + span + " " * gap + end, style=axis)
        return text
