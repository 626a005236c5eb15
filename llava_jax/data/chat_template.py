"""The Jinja chat template that reproduces `data.conversation`'s generation prompts.

`convert to-hf` writes it as `chat_template.jinja`, which the exported tokenizer and
`LlavaProcessor` both read, so that `processor.apply_chat_template(messages,
add_generation_prompt=True, tokenize=True)` gives the ids our `prompting.PromptEncoder` gives
(checked in tests/data/test_chat_template.py). It follows prompting.to_turns: system messages
(joined with "\\n") replace the system prompt; a user message's content parts are joined with
"\\n", images written as `<image>`, then placed by the model's rule; assistant text is stripped.
"""

import json

from llava_jax.data import conversation

_PROLOGUE = """\
{%- set ns = namespace(system=none, first=true) -%}
{%- for m in messages if m.role == 'system' -%}
{%- set t = m.content if m.content is string else (m.content | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('\\n')) -%}
{%- set ns.system = t if ns.system is none else ns.system ~ '\\n' ~ t -%}
{%- endfor -%}
{%- set system = DEFAULT_SYSTEM if ns.system is none else ns.system -%}
{%- macro content(m) -%}
{%- if m.content is string -%}{{ m.content }}{%- else -%}
{%- for p in m.content -%}{%- if not loop.first -%}{{ '\\n' }}{%- endif -%}
{%- if p.type == 'text' -%}{{ p.text }}{%- else -%}{{ '<image>' }}{%- endif -%}
{%- endfor -%}{%- endif -%}
{%- endmacro -%}
"""

# How a user text `q` is placed (conversation.place_images), as Jinja statements.
_PLACE = {
    "front": "{%- if q.count('<image>') -%}{%- set q = (('<image>\\n' * q.count('<image>')) ~ "
             "q.replace('<image>', '').strip()).strip() -%}{%- endif -%}",
    "as_written": "",
}

_BODY = {
    "vicuna_v1": """\
{{- bos_token ~ system ~ ' ' -}}
{%- for m in messages if m.role != 'system' -%}
{%- if m.role == 'user' -%}{%- set q = content(m) -%}PLACE{{- 'USER: ' ~ q -}}
{%- else -%}{{- ' ASSISTANT: ' ~ content(m).strip() ~ eos_token -}}{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- ' ASSISTANT:' -}}{%- endif -%}
""",
    "llama_2": """\
{%- for m in messages if m.role != 'system' -%}
{%- if m.role == 'user' -%}{%- set q = content(m) -%}PLACE
{{- bos_token ~ '[INST] ' ~ (('<<SYS>>\\n' ~ system ~ '\\n<</SYS>>\\n\\n') if ns.first and system else '') ~ q ~ ' [/INST]' -}}
{%- set ns.first = false -%}
{%- else -%}{{- ' ' ~ content(m).strip() ~ ' ' ~ eos_token -}}{%- endif -%}
{%- endfor -%}
""",
    "plain": """\
{%- for m in messages if m.role != 'system' -%}
{%- if m.role == 'user' -%}{{- bos_token ~ ('<image>' * content(m).count('<image>')) -}}
{%- else -%}{{- content(m).strip() ~ '\\n' -}}{%- endif -%}
{%- endfor -%}
""",
}


def jinja(template: str, image_placement: str, system_prompt: str) -> str:
  """The chat template for a model trained with these prompt settings."""
  if template not in _BODY:
    raise ValueError(f"unknown template {template!r}; expected one of {conversation.TEMPLATES}")
  placement = "front" if image_placement == "random" else image_placement
  system = json.dumps(system_prompt, ensure_ascii=False)
  return (_PROLOGUE.replace("DEFAULT_SYSTEM", system)
          + _BODY[template].replace("PLACE", _PLACE[placement]))
