"""The demo: a verifiable arithmetic world built offline on a CPU (`demo.world`), its feedback as a data
source, its held-out tasks, and its SFT model as a model source. docs/DEMO.md.

Everything demo-specific lives in this package and is registered from here into the general registries
(`kto_bench.extensions` names this package; `registry.load_extensions` imports it on the first lookup):
  data source   demo_arith                                 (data.sources.SOURCES)
  tasks         demo_arith_gen, demo_arith_mc, demo_arith_dev (eval.tasks.TASKS)
  model source  demo                                       (models.MODEL_SOURCES; spec: model.source: demo)
Registering imports nothing heavy: the entries are lazy "module:attr" names (torch loads with `demo.world`).
The spec's side (`spec.DemoWorldSpec`, `spec.DEMO_WORLDS`) stays in the spec.
"""

from kto_bench.data.sources import SOURCES, Source
from kto_bench.demo.tasks import TASK_ENTRIES
from kto_bench.eval.tasks import TASKS
from kto_bench.models import MODEL_SOURCES, ModelSource

SOURCES.add(
    "demo_arith",
    Source(
        "pairs", "kto_bench.demo.world:feedback_source", path_of_model="kto_bench.demo.hooks:world_folder"
    ),
    "The demo's verifiable arithmetic world: sampled completions labelled by a checker.",
)
for _entry in TASK_ENTRIES:
    TASKS.add(_entry.name, _entry, _entry.doc)
del _entry
MODEL_SOURCES.add(
    "demo",
    ModelSource(
        folder="kto_bench.demo.hooks:model_folder",
        identity="kto_bench.demo.hooks:identity",
        task_data="kto_bench.demo.hooks:task_data",
    ),
    "the demo world's SFT model (model.world)",
)
