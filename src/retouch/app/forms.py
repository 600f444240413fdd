"""Gradio controls from a config dataclass's fields, and back: the app's side of the CLI's method options.

``retouch edit`` turns every field of a method's config into an option (:mod:`retouch.cli.editing`); a tab
shows the fields worth a control. :class:`ConfigForm` makes each one where the tab's layout wants it, with
the field's default, its help (``metadata["help"]``) as the control's info line and a kind from its type
hint (:func:`retouch.batch.field_kinds`: bool → checkbox, int/float → slider or number box, str → text box),
and turns the controls' values back into typed field values for :func:`retouch.methods.make_config`.
A tab names only what a dataclass cannot know: labels, slider ranges and choices.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence


class Shown:
    """How a tab shows one field: its ``label``, a slider ``range`` (low, high, step) or ``choices`` (a radio,
    or a ``dropdown``), a starting ``value`` other than the field's default, and any other Gradio ``props``."""

    def __init__(self, label: str, *, range: tuple[float, float, float] | None = None,
                 choices: Sequence | None = None, dropdown: bool = False, value=None, **props):
        self.label, self.range, self.choices, self.dropdown, self.value = label, range, choices, dropdown, value
        self.props = props


class ConfigForm:
    """Controls for some fields of ``config_class``; ``show`` places them, ``values`` reads them back.

    A field whose default is None (an effect that is off unless given) reads a zero or empty control as
    None, so a slider's 0 means "off". Each control's ``elem_id`` is ``{prefix}-{field-name}``.
    """

    def __init__(self, config_class: type, prefix: str, **shown: Shown):
        from retouch.batch import field_kinds

        self.prefix, self.shown = prefix, shown
        self.fields = {f.name: f for f in dataclasses.fields(config_class)}
        self.kinds = field_kinds(config_class)
        unknown = sorted(set(shown) - set(self.fields))
        if unknown:
            raise ValueError(f"{config_class.__name__} has no field {', '.join(unknown)}")
        self.controls: dict[str, object] = {}

    def show(self, *names: str) -> list:
        """Make the controls of ``names`` at the current place of the layout; returns them."""
        made = [self._control(name) for name in names]
        self.controls.update(zip(names, made))
        return made

    @property
    def inputs(self) -> list:
        """The controls in the order they were shown: the order of :meth:`values`' arguments."""
        return list(self.controls.values())

    def values(self, raw: Sequence) -> dict:
        """Field values from the controls' values (in :attr:`inputs` order), typed as the fields are."""
        return {name: self._typed(name, value) for name, value in zip(self.controls, raw, strict=True)}

    def _control(self, name: str):
        import gradio as gr

        spec, field = self.shown[name], self.fields[name]
        kind = self.kinds[name][0]
        value = field.default if spec.value is None else spec.value
        props = dict(label=spec.label, info=field.metadata.get("help", ""),
                     elem_id=f"{self.prefix}-{name.replace('_', '-')}", **spec.props)
        if spec.choices is not None:
            choices = list(spec.choices)
            value = value if value in choices else (choices[0] if choices else None)
            return (gr.Dropdown if spec.dropdown else gr.Radio)(choices, value=value, **props)
        if kind is bool:
            return gr.Checkbox(value=bool(value), **props)
        if kind in (int, float) and spec.range is not None:
            low, high, step = spec.range
            return gr.Slider(low, high, value=value, step=step, **props)
        if kind in (int, float):
            return gr.Number(value, precision=0 if kind is int else None, **props)
        return gr.Textbox(value=value, **props)

    def _typed(self, name: str, value):
        kind, default = self.kinds[name][0], self.fields[name].default
        if default is None and not value:
            return None
        if value is None or (value == "" and kind is not str):
            return default
        return kind(value)
