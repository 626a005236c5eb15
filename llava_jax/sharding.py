"""The device mesh, the ONE logical→mesh axis rules table, and batch placement.

Parameters carry logical axis names (`embed`, `mlp`, ...) from the model; this file alone decides
which mesh axis (`data`, `fsdp`, `tensor`) each name maps to. Everything else asks here.
"""

from collections.abc import Callable, Mapping, Sequence
import functools
import math
import os

from absl import logging
import flax.linen as nn
import jax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec
import numpy as np

from llava_jax import model as model_lib

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Logical axis name → mesh axis (or None = replicated). Parameters: `embed` is split over `fsdp`
# (ZeRO-3 style), the "wide" axes over `tensor` (Megatron style). Activations follow the batch, and
# their wide axes follow the weights that produce them, so tensor parallelism needs no gathers.
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("vision_embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("vocab", "tensor"),
    ("vision_mlp", "tensor"),
    ("vision_heads", "tensor"),
    ("layers", None),
    ("lora_rank", None),
    ("head_dim", None),
    ("vision_patch", None),
    ("vision_pos", None),
    ("length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)


def mesh_shape(sizes: Mapping[str, int], num_devices: int) -> tuple[int, int, int]:
  """Resolves the (data, fsdp, tensor) sizes; at most one may be -1 and takes what is left."""
  shape = [int(sizes[name]) for name in MESH_AXES]
  fills = [i for i, s in enumerate(shape) if s == -1]
  if len(fills) > 1 or any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"config.mesh {dict(zip(MESH_AXES, shape))}: sizes must be >= 1, "
                     "with at most one -1")
  known = math.prod(s for s in shape if s != -1)
  if fills:
    if num_devices % known:
      raise ValueError(f"config.mesh {dict(zip(MESH_AXES, shape))}: {num_devices} devices "
                       f"are not divisible by {known}")
    shape[fills[0]] = num_devices // known
  if math.prod(shape) != num_devices:
    raise ValueError(f"config.mesh {dict(zip(MESH_AXES, shape))} needs {math.prod(shape)} "
                     f"devices, found {num_devices}")
  return tuple(shape)


def make_mesh(sizes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ('data', 'fsdp', 'tensor') mesh with Auto axes, which Linen's logical partitioning expects.

  `jax.make_mesh` would give Explicit axes in jax 0.10; `Mesh(array, names)` gives Auto ones.
  """
  devices = jax.devices() if devices is None else list(devices)
  shape = mesh_shape(sizes, len(devices))
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def mesh_axes(logical_names: Sequence[str | None], rules=LOGICAL_AXIS_RULES) -> PartitionSpec:
  """Logical dimension names → PartitionSpec over mesh axes.

  Unlike Flax's resolver this allows a name to repeat (the patch kernel's spatial and channel
  dims are all `vision_patch`); a mesh axis already used by an earlier dim is not used again.
  Unknown names raise, so a typo in a model cannot silently replicate a weight.
  """
  table = dict(rules)
  used, spec = set(), []
  for name in logical_names:
    if name is not None and name not in table:
      raise ValueError(f"logical axis {name!r} (in {tuple(logical_names)}) has no rule in "
                       "llava_jax/sharding.py:LOGICAL_AXIS_RULES")
    axes = None if name is None else table[name]
    axes_set = {axes} if isinstance(axes, str) else set(axes or ())
    if axes is None or axes_set & used:
      spec.append(None)
    else:
      used |= axes_set
      spec.append(axes)
  return PartitionSpec(*spec)


def logical_shardings(boxed_tree, mesh: Mesh, rules=LOGICAL_AXIS_RULES):
  """NamedShardings for a tree whose leaves are (abstract) `nn.LogicallyPartitioned` boxes.

  Unboxed leaves (e.g. an optimizer step count) become replicated.
  """
  def leaf_sharding(x):
    names = x.names if isinstance(x, nn.LogicallyPartitioned) else ()
    return NamedSharding(mesh, mesh_axes(names, rules))
  return jax.tree.map(leaf_sharding, boxed_tree,
                      is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def abstract(boxed_tree, mesh: Mesh | None = None, rules=LOGICAL_AXIS_RULES):
  """ShapeDtypeStructs of a tree of abstract boxes (a `jax.eval_shape` of an init), unboxed.

  Each carries its sharding: from its logical axes on `mesh`, or the first device without a mesh.
  """
  if mesh is None:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shardings = jax.tree.map(lambda _: device, nn.unbox(boxed_tree))
  else:
    shardings = logical_shardings(boxed_tree, mesh, rules)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      nn.unbox(boxed_tree), shardings)


def abstract_params(module, mesh: Mesh | None = None, rules=LOGICAL_AXIS_RULES):
  """The abstract parameters of a Llava `module`: the one place they are built.

  ShapeDtypeStructs (nothing is allocated) sharded by their logical axes on `mesh`, or on the
  first device without a mesh: the target a checkpoint is read into.
  """
  return abstract(model_lib.logical_param_shapes(module), mesh, rules)


def with_activation_rules(fn: Callable, mesh: Mesh, rules=LOGICAL_AXIS_RULES) -> Callable:
  """`fn`, traced with `mesh` and the rules table active.

  The model marks its activations with `nn.with_logical_constraint` (batch over data x fsdp,
  wide axes over tensor); those are no-ops unless a mesh and rules are set while tracing. Wrap
  the function given to `jax.jit` with this so the constraints guide XLA's partitioner.
  """
  @functools.wraps(fn)
  def traced_with_rules(*args, **kwargs):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(rules):
      return fn(*args, **kwargs)
  return traced_with_rules


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over data×fsdp; all other dimensions whole."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's rows of the global batch → global arrays sharded over data×fsdp."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


def _processes_from_environment() -> int:
  """How many processes the launcher says this job has (1 when it says nothing)."""
  for var in ("JAX_NUM_PROCESSES", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
    if os.environ.get(var, "").isdigit():
      return int(os.environ[var])
  hosts = os.environ.get("TPU_PROCESS_ADDRESSES") or os.environ.get("TPU_WORKER_HOSTNAMES")
  if hosts:
    return len(hosts.split(","))
  return 1


def _tpu_chips_attached() -> int:
  """TPU chips on this machine's PCI bus (JAX's own check; 0 if that private helper moved)."""
  try:
    from jax._src import hardware_utils  # pylint: disable=g-import-not-at-top
    return hardware_utils.num_available_tpu_chips_and_device_id()[0]
  except (ImportError, AttributeError, OSError):
    return 0


def initialize_distributed(timeout_s: int = 300) -> bool:
  """Calls `jax.distributed.initialize()` once, when the job may have several processes.

  That is: the environment names several (`JAX_COORDINATOR_ADDRESS` + `JAX_NUM_PROCESSES` +
  `JAX_PROCESS_ID`, used as given; SLURM_NTASKS > 1; Open MPI; GKE TPU host lists), or this is a
  Cloud TPU VM, where the VMs of a pod slice (one or many) are read from the TPU metadata. JAX
  detects everything but the explicit settings itself. Returns True if initialized.
  """
  if jax.distributed.is_initialized():
    return True
  only_tpu_says_so = _processes_from_environment() <= 1
  if only_tpu_says_so and not _tpu_chips_attached():
    return False
  explicit = {}
  if os.environ.get("JAX_COORDINATOR_ADDRESS") and os.environ.get("JAX_NUM_PROCESSES"):
    explicit = dict(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                    num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                    process_id=int(os.environ["JAX_PROCESS_ID"]))
  try:
    jax.distributed.initialize(initialization_timeout=timeout_s, **explicit)
  except ValueError as e:
    if not only_tpu_says_so:
      raise
    # TPU chips but no pod metadata JAX can read (not a Cloud TPU VM): run as one process.
    logging.warning("TPU chips found but no TPU pod metadata (%s); running as one process", e)
    return False
  return True
