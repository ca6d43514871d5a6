"""The spec: one pydantic model per TOML table (README: Using it), every field with a default a
practitioner would pick, unknown keys forbidden. Tables whose stage comes later validate now.

Loading, TOML positions and error messages live in `ftc.specload`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Positive = Annotated[int, Field(gt=0)]
# Upper bounds where a value is legal but would exhaust the machine long before it finished.
Bounded = Annotated[int, Field(gt=0, le=1 << 20)]

# A project name becomes part of file names in the store: a slug, never a path.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
# The methods that train the embedding rows of added tokens (LoRA's kinds: PEFT's trainable tokens).
VOCAB_METHODS = ("lora", "dora", "qlora", "full")


class Table(BaseModel):
    # NaN and infinity are never a meaningful rate, weight or threshold; a TOML `inf` is refused here.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False)


class Project(Table):
    name: str = Field("ftc-run", description="Name of the run, used in run directories and reports: letters, "
                      "digits, `.`, `_` and `-`, at most 100 characters.")
    seed: int = Field(42, ge=0, le=2**32 - 1, description="Seed for splits, sampling, augmentation and training "
                      "(0 to 2³²−1, what numpy and torch accept).")

    @field_validator("name")
    @classmethod
    def _slug(cls, v: str) -> str:
        if not NAME.fullmatch(v) or ".." in v:
            raise ValueError("a project name is used in file names: 1 to 100 letters, digits, `.`, `_` or `-`, "
                             "starting with a letter or digit (no `/`, `..`, spaces or control characters)")
        return v


class ModelSpec(Table):
    base: str = Field(
        description="Local HF model directory, a .gguf file, pkg://<package>/<path> (a file shipped in an "
        "installed Python package), or a hub id when online."
    )
    task: Literal["causal-lm", "classification", "token-classification", "question-answering", "reward-model",
                  "preference"] = Field(
        "causal-lm", description="What the model learns: text generation (`causal-lm`), a label per text "
        "(`classification`), a tag per word (`token-classification`: NER, POS), an answer span in a context "
        "(`question-answering`: extractive, SQuAD v1/v2), a score of a response from preference pairs "
        "(`reward-model`) or a policy tuned on them (`preference`: DPO, IPO, SimPO, ORPO).")
    labels: list[str] | None = Field(None, description="Class names (classification) or tags (token-classification, "
                                     "e.g. [\"O\", \"B-PER\", \"I-PER\"]); inferred from the data if unset.")
    trust_remote_code: bool = Field(False, description="Allow a model whose config names its own Python classes "
                                    "(`auto_map`): loading it runs the .py files of its directory.")


PAIR_COLUMNS = ("chosen", "rejected", "responses", "scores", "pairs", "completion", "margin")


class Columns(Table):
    """Which source column holds each field. Causal-LM: `text`, or `prompt`/`response` (+`system`),
    or `messages`; classification: `text` (+`text_pair`) and `label`; token classification:
    `tokens` + `tags` (lists), or `text` + `entities` (character spans); question answering:
    `context`, `question`, `answers` (+`id`). A message is `{role, content}` (OpenAI, with `name`
    and `tool_calls` where the template renders them) or ShareGPT's `{from, value}`; `role`,
    `content` and `roles` say how to read other forms."""

    text: str | None = None
    text_pair: str | None = None
    prompt: str | None = None
    response: str | None = None
    system: str | None = None
    messages: str | None = None
    label: str | None = None
    tokens: str | None = Field(None, description="Token classification: a list of words per row.")
    tags: str | None = Field(None, description="Token classification: a list of tags, one per word.")
    entities: str | None = Field(None, description="Token classification: `[{start, end, label}]` character spans "
                                 "of `text` (end exclusive), as annotation tools export them.")
    context: str | None = Field(None, description="Question answering: the passage the answer is taken from.")
    question: str | None = None
    answers: str | None = Field(None, description="Question answering: `{text: [...], answer_start: [...]}` "
                                "(SQuAD), a list of `{text, answer_start}`, or one answer string; empty for "
                                "a question without an answer (SQuAD v2).")
    id: str | None = Field(None, description="Question answering: the question's id (default: its row).")
    chosen: str | None = Field(None, description="Preference pairs: the preferred response (a string or messages; "
                               "without `prompt`, a whole conversation sharing its prompt with `rejected`).")
    rejected: str | None = Field(None, description="Preference pairs: the other response.")
    responses: str | None = Field(None, description="Preference pairs from a ranked list: several responses to "
                                  "`prompt`, with `scores` (higher is better); the source's `pairs` says which pairs.")
    scores: str | None = Field(None, description="Preference pairs: one number per entry of `responses`.")
    completion: str | None = Field(None, description="Unpaired preference rows (KTO): one response to `prompt`, "
                                   "judged by the row's boolean `label` (true: desirable).")
    margin: str | None = Field(None, description="Preference pairs: a number per pair, how much better `chosen` "
                               "is (a reward model's Bradley–Terry margin, replacing `train.preference.margin`).")
    pairs: Literal["best-vs-rest", "all"] | None = Field(
        None, description="Ranked lists (`responses` + `scores`): the best response against each lower-scored one "
        "(`best-vs-rest`, the default), or every higher-scored one against every lower (`all`).")
    role: str | None = Field(None, description="Key of a message's role (default: `role`, else ShareGPT's `from`).")
    content: str | None = Field(None, description="Key of a message's content (default: `content`, else `value`).")
    roles: dict[Literal["user", "assistant", "system", "tool"], list[str]] = Field(
        default_factory=dict, description="More names for each role, e.g. `{ assistant = [\"bot\"] }`, besides "
        "human/user, gpt/assistant/chatgpt/bing, system, tool/function/observation; a message with a role no "
        "name covers is quarantined.")

    @model_validator(mode="after")
    def _one_shape(self) -> Columns:
        shapes = [self.text is not None, self.prompt is not None or self.response is not None, self.messages is not None,
                  self.tokens is not None, self.context is not None]
        if sum(shapes) > 1:
            raise ValueError("map exactly one of `text`, `prompt`/`response`, `messages`, `tokens` or `context`")
        for key, needs in (("tags", "tokens"), ("entities", "text"), ("question", "context"), ("answers", "context"),
                           ("id", "context")):
            if getattr(self, key) is not None and getattr(self, needs) is None:
                raise ValueError(f"`{key}` goes with `{needs}`")
        if (self.chosen is None) != (self.rejected is None):
            raise ValueError("`chosen` and `rejected` go together (preference pairs)")
        if (self.responses is None) != (self.scores is None) or (self.responses is not None and self.chosen):
            raise ValueError("a ranked list maps `responses` and `scores` (with `prompt`), not `chosen`/`rejected`")
        if self.pairs is not None and self.responses is None:
            raise ValueError("`pairs` says how a ranked list (`responses` + `scores`) becomes pairs")
        if self.chosen is not None and any(v is not None for v in (self.response, self.text, self.messages)):
            raise ValueError("preference pairs map `prompt` (optional), `chosen` and `rejected`")
        if self.completion is not None and (self.prompt is None or self.chosen or self.responses or self.response):
            raise ValueError("`completion` is an unpaired response (KTO): it goes with `prompt` and `label`, not with "
                             "`chosen`/`rejected`, `responses` or `response`")
        if self.margin is not None and self.chosen is None:
            raise ValueError("`margin` is a pair's: it goes with `chosen` and `rejected`")
        if self.chosen is None and self.responses is None and self.completion is None \
                and (self.prompt is None) != (self.response is None):
            raise ValueError("`prompt` and `response` go together")
        if self.system is not None and self.prompt is None:
            raise ValueError("`system` needs `prompt`/`response`")
        if (self.role or self.content or self.roles) and (shapes[0] or shapes[1]):
            raise ValueError("`role`, `content` and `roles` say how messages are read: they go with `messages`")
        seen: dict[str, str] = {}
        for role, names in self.roles.items():
            for name in names:
                if seen.setdefault(name, role) != role:
                    raise ValueError(f"`roles`: '{name}' is given to both `{seen[name]}` and `{role}`")
        return self


class Source(Table):
    name: str | None = Field(None, description="Name shown in summaries; defaults to the file stem.")
    path: str | list[str] = Field(description="File(s) or glob(s), relative to the spec.")
    format: Literal["auto", "csv", "tsv", "jsonl", "json", "parquet", "txt", "conll"] = Field(
        "auto", description="File format; `auto` goes by the extension (`.conll`: CoNLL token-per-line)."
    )
    encoding: str = Field("auto", description="Text encoding of the files: any codec Python knows (utf-8, "
                          "latin-1, cp1252, utf-16, shift_jis, ...), or `auto`: a byte-order mark decides, else "
                          "UTF-8, else (mostly invalid UTF-8) cp1252, and `ftc prep` says so.")
    columns: Columns = Field(default_factory=Columns, description="Column mapping; defaults by name.")
    weight: float = Field(1.0, gt=0.0, le=1000.0, description="Mixing weight: each training row is used `weight` times "
                          "on average (2.0 doubles the source, 0.5 keeps a seeded half).")
    max_rows: Positive | None = Field(None, description="Read at most this many rows (in file order).")
    label: str | None = Field(None, description="Classification: the label of every row of this source "
                              "(e.g. one file per class), instead of a label column.")

    @field_validator("encoding")
    @classmethod
    def _known_codec(cls, v: str) -> str:
        from ftc.encodings import codec_name

        if v != "auto" and codec_name(v) is None:
            raise ValueError(f"unknown text encoding {v!r}: give `auto` or a codec Python knows (utf-8, latin-1, "
                             "cp1252, utf-16, ...)")
        return v

    @model_validator(mode="after")
    def _one_label(self) -> Source:
        if self.label is not None and self.columns.label is not None:
            raise ValueError("give either `label` (one label for the whole source) or `columns.label`, not both")
        return self


class Replace(Table):
    pattern: str = Field(description="Regex (Rust `regex` syntax: no look-around or back-references).")
    with_: str = Field("", alias="with", description="Replacement; `$1` or `${name}` insert a group, `$$` a dollar.")

    @field_validator("pattern")
    @classmethod
    def _pattern_compiles(cls, v: str) -> str:
        _check_regex(v)
        return v


class NearDedup(Table):
    threshold: Fraction = Field(0.8, description="Jaccard similarity above which two documents are duplicates.")
    shingle: Annotated[int, Field(gt=0, le=1000)] = Field(5, description="Characters per shingle.")
    num_perm: Annotated[int, Field(gt=0, le=4096)] = Field(128, description="MinHash permutations (at most 4096).")


class Clean(Table):
    """Opt-in rules, applied in this order: strip_html, remove_control, normalize, replace,
    collapse_whitespace; then the drop rules and limits see the result."""

    normalize: Literal["none", "NFC", "NFKC"] = Field("none", description="Unicode normalization form.")
    strip_html: bool = Field(False, description="Remove tags (block tags become line breaks), decode entities.")
    collapse_whitespace: bool = Field(False, description="Runs of whitespace become one space; ends trimmed.")
    remove_control: bool = Field(False, description="Remove control characters (Unicode Cc) but tab and newlines.")
    min_chars: Annotated[int, Field(ge=0)] = Field(0, description="Drop rows with fewer characters (after cleaning).")
    max_chars: Positive | None = Field(None, description="Drop rows with more characters (after cleaning).")
    min_tokens: Annotated[int, Field(ge=0)] = Field(0, description="Drop rows with fewer tokens (before truncation).")
    max_tokens: Positive | None = Field(None, description="Drop rows with more tokens (before truncation).")
    drop_if_matches: list[str] = Field(default_factory=list, description="Regexes (Rust `regex` syntax); a row "
                                       "with a match is dropped.")
    replace: list[Replace] = Field(default_factory=list, description="Regex replacements, in order.")
    dedup: Literal["none", "exact", "near"] = Field("none", description="`exact`: same text once lowercased and "
                                                    "whitespace-collapsed; `near`: MinHash LSH. First occurrence kept.")
    near: NearDedup = Field(default_factory=NearDedup)

    @model_validator(mode="after")
    def _limits_ordered(self) -> Clean:
        for lo, hi in (("min_chars", "max_chars"), ("min_tokens", "max_tokens")):
            if getattr(self, hi) is not None and getattr(self, lo) > getattr(self, hi):
                raise ValueError(f"`{lo}` = {getattr(self, lo)} is above `{hi}` = {getattr(self, hi)}: every row "
                                 "would be dropped")
        return self

    @field_validator("drop_if_matches")
    @classmethod
    def _patterns_compile(cls, v: list[str]) -> list[str]:
        for p in v:
            _check_regex(p)
        return v


class SplitSpec(Table):
    valid: Fraction = Field(0.05, description="Fraction of rows held out for validation.")
    test: Fraction = Field(0.05, description="Fraction of rows held out for the final test.")
    by: Literal["hash", "random"] = Field("hash", description="`hash`: a row keeps its split as data grows; `random`: seeded.")
    stratify: bool = Field(True, description="Keep label proportions in every split (classification).")
    column: str | None = Field(None, description="A source column that already names the split.")

    @model_validator(mode="after")
    def _leaves_training(self) -> SplitSpec:
        if self.valid + self.test >= 1.0:
            raise ValueError(f"valid + test = {self.valid + self.test:g} leaves nothing to train on; keep it below 1")
        return self


class Augment(Table):
    """Training rows only. Each copy applies synonym replacement, insertion, swap and deletion
    (those with a rate above 0, in that order), then the hook; chat data changes user turns only."""

    copies: Annotated[int, Field(ge=0, le=1000)] = Field(0, description="Augmented copies per training row.")
    swap: Fraction = Field(0.0, description="Swaps: this fraction of the words (at least one).")
    delete: Fraction = Field(0.0, description="Each word is deleted with this probability (one always stays).")
    insert: Fraction = Field(0.0, description="Insertions of a synonym of a word (of a word when no synonym).")
    synonym: Fraction = Field(0.0, description="Fraction of the words replaced by a synonym from `synonyms`.")
    synonyms: str | None = Field(None, description="Synonym table relative to the spec: TSV (word, then its "
                                 "synonyms, tab-separated) or JSON ({\"word\": [\"synonym\", ...]}).")
    hook: str | None = Field(None, description="`module:function` taking a list of texts and returning as many "
                             "(e.g. back-translation); the module may sit next to the spec.")

    @field_validator("hook")
    @classmethod
    def _hook_form(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", v):
            raise ValueError(f"expected `module:function`, found {v!r}")
        return v

    @model_validator(mode="after")
    def _coherent(self) -> Augment:
        ops = self.swap or self.delete or self.insert or self.synonym or self.hook
        if self.copies and not ops:
            raise ValueError(f"`copies` = {self.copies} but no operation is enabled: set `swap`, `delete`, "
                             "`insert`, `synonym` or `hook`")
        if ops and not self.copies:
            raise ValueError("augmentation operations are set but `copies` = 0: set how many copies per row")
        if self.synonym and self.synonyms is None:
            raise ValueError("`synonym` replacement needs a `synonyms` table")
        return self


class Balance(Table):
    strategy: Literal["none", "oversample", "undersample", "class-weights"] = Field(
        "none", description="Training split, classification: repeat minority rows, drop majority rows, or keep "
        "the rows and record class weights for the loss.")
    target_ratio: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        1.0, description="Smallest class / largest class to reach (1.0: all equal).")


class Tags(Table):
    """Token classification: how tags are read and checked."""

    scheme: Literal["IOB2", "IOBES", "IO"] = Field("IOB2", description="Tag scheme: IOB2 (BIO), IOBES (BIOES) "
                                                   "or IO (every tag `I-TYPE` or `O`).")
    invalid: Literal["repair", "drop"] = Field(
        "repair", description="A sequence the scheme forbids (I-X after O, a type change inside an entity): "
        "`repair` it to the entities seqeval's default mode reads, or `drop` (quarantine) the row.")


class Data(Table):
    sources: list[Source] = Field(min_length=1)
    clean: Clean = Field(default_factory=Clean)
    split: SplitSpec = Field(default_factory=SplitSpec)
    augment: Augment = Field(default_factory=Augment)
    balance: Balance = Field(default_factory=Balance)
    max_bad_fraction: Fraction = Field(0.05, description="Fail when more than this fraction of rows is quarantined.")
    tags: Tags = Field(default_factory=Tags)


class Tokenize(Table):
    max_length: Annotated[int, Field(ge=8, le=1_048_576)] = 2048
    template: str = Field("auto", description="`auto` (the model's own, else chatml), `model`, a built-in "
                          "(`chatml`, `alpaca`) or a path to a .jinja file.")
    train_on: Literal["completions", "all"] = Field("completions", description="Which tokens carry labels.")
    truncation: Literal["right", "left", "drop", "chunk"] = Field(
        "right", description="Examples over max_length: cut the end, cut the start, drop, or (raw text) "
        "concatenate with EOS and split into max_length blocks."
    )
    pack: bool = Field(True, description="Best-fit-decreasing packing into rows of max_length (causal-lm).")
    label_all_subwords: bool = Field(False, description="Token classification: every sub-word of a word carries "
                                     "its tag (B-X continues as I-X), not only the first.")
    doc_stride: Positive = Field(128, description="Question answering: tokens shared by consecutive windows of "
                                 "a context longer than max_length.")
    add_tokens: list[str] = Field(default_factory=list, description="Domain words to add to the vocabulary as "
                                  "whole tokens (`ftc vocab suggest` lists candidates); the model's embeddings grow "
                                  "to match, each new row starting as the mean of the pieces the word was split into.")
    add_tokens_file: str | None = Field(None, description="A UTF-8 file of more tokens to add, one per line (blank "
                                        "lines and lines starting with `#` skipped).")

    @field_validator("add_tokens")
    @classmethod
    def _tokens_not_blank(cls, v: list[str]) -> list[str]:
        if blank := [i for i, t in enumerate(v) if not t.strip()]:
            raise ValueError(f"`add_tokens[{blank[0]}]` is blank: a token to add holds at least one non-space "
                             "character")
        return v


class Lora(Table):
    r: Annotated[int, Field(gt=0, le=65_536)] = 8
    alpha: float = Field(16, gt=0)
    dropout: Fraction = 0.05
    target_modules: str | list[str] = "all-linear"


class PromptTuning(Table):
    num_virtual_tokens: Annotated[int, Field(gt=0, le=65_536)] = 20


class EarlyStopping(Table):
    """Stop when the validation metric has not improved for `patience` evaluations; the best
    checkpoint is restored at the end. `loss` for every task (perplexity follows it), and
    `accuracy` or `f1` (macro) for classification."""

    patience: Positive = 3
    metric: Literal["loss", "accuracy", "f1"] = "loss"
    threshold: Annotated[float, Field(ge=0.0)] = 0.0

    @field_validator("metric", mode="before")
    @classmethod
    def _trainer_name(cls, v: Any) -> Any:  # the Trainer logs them as eval_loss, eval_accuracy, ...
        return v.removeprefix("eval_") if isinstance(v, str) else v


class Distributed(Table):
    """How several processes train (started by torchrun, accelerate launch or `ftc build --nproc`);
    one process ignores it."""

    strategy: Literal["ddp", "fsdp", "deepspeed"] = Field(
        "ddp", description="`ddp`: every process holds the model, gradients are averaged; `fsdp`: parameters, "
        "gradients and optimizer state sharded across processes (PyTorch FSDP); `deepspeed`: DeepSpeed ZeRO.")
    sharding: Literal["full_shard", "shard_grad_op", "hybrid_shard", "no_shard"] = Field(
        "full_shard", description="`fsdp`: what is sharded (full_shard = ZeRO-3, shard_grad_op = ZeRO-2).")
    auto_wrap: Literal["transformer", "size", "none"] = Field(
        "transformer", description="`fsdp`: the units sharded together: each transformer block, blocks of "
        "`min_params` parameters, or the whole model.")
    min_params: Positive = Field(100_000_000, description="`fsdp` with `auto_wrap = \"size\"`: parameters per unit.")
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="`deepspeed`: the ZeRO stage.")
    offload: bool = Field(False, description="`fsdp`: parameters and gradients on CPU between uses; `deepspeed`: "
                          "the optimizer state (and at stage 3 the parameters) on CPU.")

    @model_validator(mode="after")
    def _knobs_of_the_strategy(self) -> Distributed:
        owners = {"sharding": ("fsdp",), "auto_wrap": ("fsdp",), "min_params": ("fsdp",),
                  "zero_stage": ("deepspeed",), "offload": ("fsdp", "deepspeed")}
        for key in sorted(self.model_fields_set & owners.keys()):
            if self.strategy not in owners[key]:
                named = " or ".join(f"`{o}`" for o in owners[key])
                raise ValueError(f"`{key}` is a setting of strategy {named}, not `{self.strategy}`")
        return self


class Ewc(Table):
    lambda_: float = Field(alias="lambda", gt=0, description="Weight of the penalty λ·Σ F·(θ − θ₀)².")
    fisher_rows: Bounded = Field(256, description="Rows of the retained data's training part the diagonal Fisher "
                                 "information is averaged over (computed once, stored, reused).")


class Forgetting(Table):
    """What fine-tuning costs the base on general data, measured and limited."""

    retain: list[Source] = Field(default_factory=list, description="Sources of general data, read like "
                                 "`data.sources`: their held-out part is evaluated with the base and the tuned "
                                 "model, so the report states what the fine-tune cost on them.")
    test: Annotated[float, Field(gt=0.0, lt=1.0)] = Field(0.5, description="Fraction of the retained rows held "
                                                          "out for that evaluation; replay and EWC use the rest.")
    replay: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(0.0, description="Fraction of the training examples "
                                                            "drawn from the retained data (0: none).")
    ewc: Ewc | None = Field(None, description="Elastic Weight Consolidation: penalise moving the weights the "
                            "retained data depends on (full, freeze, lora, dora; LoRA on its merged delta).")

    @model_validator(mode="after")
    def _needs_retain(self) -> Forgetting:
        if not self.retain and (self.replay or self.ewc):
            raise ValueError("`replay` and `ewc` draw on the retained data: give `retain` sources too")
        return self


EWC_METHODS = ("full", "freeze", "lora", "dora")


class Distill(Table):
    """Knowledge distillation: a teacher's predictions train the student (causal-lm, classification)."""

    teacher: str = Field(description="The teacher: a model directory, a .gguf file, pkg://…, or an earlier ftc run "
                         "(its directory, or its key prefix from `ftc cache ls`). A causal LM shares the student's "
                         "tokenizer; a classifier its labels.")
    loss: Literal["forward-kl", "reverse-kl", "jsd"] = Field("forward-kl", description="Divergence between the "
                                                            "teacher's and the student's distributions.")
    temperature: float = Field(2.0, gt=0, le=100, description="Both distributions are softened by it; the loss is "
                               "scaled by its square.")
    alpha: Fraction = Field(0.5, description="Weight of the distillation loss; 1 − alpha weighs the label loss.")
    top_k: Annotated[int, Field(gt=0, le=65_536)] = Field(32, description="Causal-lm: the teacher log-probs kept per "
                                                           "token (computed once, stored, reused).")
    compare: bool = Field(True, description="Also train the student alone at the same budget, for the report's "
                          "side-by-side (a cached build of its own).")


class PreferenceTrain(Table):
    """Preference pairs: the loss of `model.task = "preference"` and `"reward-model"`'s margin."""

    loss: Literal["dpo", "ipo", "simpo", "orpo", "kto"] = Field(
        "dpo", description="dpo (sigmoid; with label smoothing, conservative DPO), ipo, simpo (no reference), orpo "
        "(no reference, an SFT term of its own), kto (chosen answers desirable, rejected undesirable; an adapter).")
    beta: float = Field(0.1, gt=0, le=100, description="Strength of the preference term (DPO's β; SimPO's often 2).")
    label_smoothing: Annotated[float, Field(ge=0.0, lt=0.5)] = Field(
        0.0, description="dpo, simpo: the assumed fraction of pairs whose preference is flipped.")
    gamma: float = Field(0.5, ge=0, le=100, description="simpo: the target reward margin γ.")
    sft_weight: Annotated[float, Field(ge=0.0, le=100.0)] = Field(
        0.0, description="dpo, ipo: weight of an SFT term (the chosen tokens' mean NLL).")
    precompute_reference: bool = Field(False, description="With an adapter, store the base's log-probs of every "
                                       "pair once (reused by later runs on the same data and base) instead of a "
                                       "second forward with the adapter disabled; always so for full / freeze.")
    desirable_weight: Annotated[float, Field(gt=0.0, le=100.0)] = Field(1.0, description="kto: weight of the "
                                                                        "chosen (desirable) answers' loss.")
    undesirable_weight: Annotated[float, Field(gt=0.0, le=100.0)] = Field(1.0, description="kto: weight of the "
                                                                          "rejected (undesirable) answers' loss.")
    margin: Annotated[float, Field(ge=0.0, le=100.0)] = Field(
        0.0, description="reward-model: the Bradley–Terry margin m of −log σ(s_chosen − s_rejected − m).")


class Train(Table):
    method: Literal["full", "freeze", "lora", "dora", "qlora", "ia3", "prompt-tuning", "prefix-tuning"] = "lora"
    epochs: float = Field(3.0, gt=0, le=100_000)
    max_steps: Annotated[int, Field(gt=0, le=100_000_000)] | None = None
    learning_rate: float = Field(2e-4, gt=0)
    batch_size: Bounded = 8
    batch_unit: Literal["examples", "rows"] = Field(
        "examples", description="Causal-LM with packing: what `batch_size` counts. `examples`, as an unpacked "
        "script's steps (each step's examples are joined into one padding-free row); `rows`: packed rows of "
        "`max_length` tokens (several examples each, so fewer, larger steps).")
    grad_accum: Bounded = 1
    optimizer: Literal["adamw", "adafactor", "sgd", "paged-adamw-8bit"] = "adamw"
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup", "polynomial"] = Field(
        "cosine", description="Learning-rate schedule after warmup. Classification defaults to `linear` with "
        "`warmup_ratio = 0` (the Trainer's own; measured better there).")
    warmup_ratio: Fraction = 0.03
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0
    max_grad_norm: Annotated[float, Field(ge=0.0)] = 1.0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    gradient_checkpointing: bool = False
    group_by_length: bool = Field(False, description="Classification: batch texts of similar length together "
                                  "(less padding, but batches are no longer shuffled mixtures and train worse).")
    trainable_layers: Positive = Field(2, description="`freeze`: train only the top N layers and the head.")
    layer_lr_decay: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    early_stopping: EarlyStopping | None = None
    keep_best: bool = Field(False, description="End with the checkpoint of the best validation metric instead of "
                            "the last one (always so with `early_stopping`).")
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        ["tensorboard"], description="Experiment trackers, all offline and kept with the run: TensorBoard event files "
        "(`tensorboard/`), Weights & Biases in offline mode (`wandb/`, `wandb sync` uploads it), an MLflow file "
        "store (`mlruns/`) unless MLFLOW_TRACKING_URI names a server. Not part of the run's key: changing it "
        "reuses a trained run.")
    eval_steps: Positive | None = None
    save_steps: Positive | None = None
    save_total_limit: Positive = 2
    logging_steps: Positive = 10
    lora: Lora = Field(default_factory=Lora)
    prompt: PromptTuning = Field(default_factory=PromptTuning)
    distributed: Distributed = Field(default_factory=Distributed)
    forgetting: Forgetting = Field(default_factory=Forgetting)
    distill: Distill | None = None
    preference: PreferenceTrain | None = Field(None, description="Preference tasks' loss (`reward-model`, "
                                               "`preference`); their defaults when absent.")

    @model_validator(mode="after")
    def _ewc_method(self) -> Train:
        if self.forgetting.ewc and self.method not in EWC_METHODS:
            raise ValueError(f"`forgetting.ewc` penalises changed weights, which `method = \"{self.method}\"` "
                             f"does not have as such: use one of {list(EWC_METHODS)}")
        return self




class Eval(Table):
    metrics: list[Literal["accuracy", "precision", "recall", "f1", "perplexity", "bleu", "rouge", "exact_match"]] = Field(
        default_factory=list, description="Metrics on the test split: accuracy, precision, recall, f1 for "
        "classification; precision, recall, f1 of entities for token-classification; exact_match, f1 for "
        "question-answering; perplexity, bleu, rouge (greedy answers to the test prompts) for causal-lm.")
    compare_base: bool = Field(False, description="Evaluate the base model on the same split: the report shows "
                               "the gain.")
    max_new_tokens: Annotated[int, Field(gt=0, le=65_536)] = Field(
        64, description="bleu / rouge: the longest answer generated.")
    samples: Bounded = Field(200, description="bleu / rouge: test examples answered by generation.")
    mode: Literal["default", "strict"] = Field(
        "default", description="Token classification: how entities are read for scoring, as seqeval's modes "
        "(`strict`: only sequences the tag scheme allows form entities).")
    max_answer_length: Annotated[int, Field(gt=0, le=4096)] = Field(
        30, description="Question answering: the longest answer, in tokens.")
    judge: str | None = Field(None, description="Preference: a reward model (an ftc `reward-model` run, its "
                              "directory or key prefix; its exported artifact; or its spec, e.g. \"reward.toml\") "
                              "that scores the tuned and the base model's greedy answers to `samples` test prompts: "
                              "the win rate.")


class Export(Table):
    """`ftc export` and the export stage of `ftc build`; every threshold is checked
    on held-out test rows, and a failed check publishes nothing (with `verify`)."""

    merge: bool = Field(True, description="Keep the adapter merged into the base as safetensors (merged/).")
    onnx: bool = Field(False, description="Export ONNX (a classifier: model.onnx; a decoder: an "
                       "onnxruntime-genai directory); `ftc build` exports only when this is true.")
    quantize: Literal["none", "int8", "int4"] | list[Literal["int8", "int4"]] = Field(
        "none", description="Quantized variants besides fp32: `int8` (dynamic, per-channel; decoders weight-only) "
        "and, for decoders, `int4` (weight-only MatMulNBits); a list for both.")
    int4_method: Literal["gptq", "k-quant"] = Field(
        "gptq", description="How int4 weights are rounded: `gptq` (each layer's rounding error compensated "
        "against its inputs on `calibration_rows` training examples) or `k-quant` (the builder's, no data).")
    calibration_rows: Positive = Field(512, description="Training examples GPTQ measures layer inputs on (at most "
                                       "65,536 tokens of them).")
    gguf: list[Literal["f16", "q8_0", "q4_0"]] = Field(
        [], description="GGUF files for llama.cpp and Ollama (decoders of the Llama family: Llama, Mistral, Qwen2, "
        "SmolLM), with the tokenizer, chat template and an Ollama Modelfile; each read back and checked like ONNX.")
    verify: bool = Field(True, description="Fail the export when a parity check fails (the figures are always "
                         "measured and recorded).")
    opset: Positive | None = Field(None, description="ONNX opset of the classifier graph (default: the exporter's).")
    rows: Positive = Field(256, description="Held-out test examples the parity check runs: a seeded sample of the "
                           "whole test split (stratified by label for classification), the same for every variant.")
    max_abs_diff: Annotated[float, Field(gt=0.0)] = Field(
        1e-3, description="Largest absolute logit difference allowed between fp32 ONNX and PyTorch.")
    near_tie: Annotated[float, Field(ge=0.0)] = Field(
        0.1, description="A flipped argmax is a near-tie when the reference's top-two logit gap there is under this "
        "× its median gap over the sample: the model was unsure, and rounding goes either way. Near-ties are "
        "reported, not judged; 0 judges every flip.")
    max_confident_flips: Fraction = Field(
        0.005, description="Largest fraction of the rows whose argmax may flip where the reference was sure (not a "
        "near-tie): fp32 against PyTorch, a quantized classifier against fp32.")
    min_agreement: Fraction | None = Field(
        None, description="Argmax agreement required of fp32 with PyTorch, and of a quantized classifier with fp32, "
        "near-ties included (the strict check; unset: agreement is reported, and `max_confident_flips` judges).")
    max_accuracy_drop: Fraction = Field(
        0.005, description="Largest accuracy loss of a quantized classifier against PyTorch once its near-tie flips "
        "are set aside (0.005 = half a point; with `near_tie = 0`, the whole loss).")
    max_perplexity_ratio: Annotated[float, Field(ge=1.0)] = Field(
        1.05, description="Largest perplexity of a quantized decoder over PyTorch's.")

    @field_validator("quantize")
    @classmethod
    def _one_spelling(cls, v: str | list[str]) -> str | list[str]:
        """`["int8"]` and `"int8"` are the same export, and must have the same key."""
        if isinstance(v, str):
            return v
        kept = [q for q in ("int8", "int4") if q in v]
        return kept if len(kept) > 1 else kept[0] if kept else "none"

    @field_validator("gguf", mode="before")
    @classmethod
    def _gguf_list(cls, v: Any) -> Any:
        """`"q8_0"` is `["q8_0"]`; the order written does not change the export (nor its key)."""
        v = [v] if isinstance(v, str) else v
        return sorted(set(v), key=("f16", "q8_0", "q4_0").index) if isinstance(v, list) and all(
            x in ("f16", "q8_0", "q4_0") for x in v) else v


class Dimension(Table):
    """One searched key: exactly one of a log-uniform or uniform float range, an integer range
    (both ends included), or a list of choices."""

    log_uniform: tuple[float, float] | None = None
    uniform: tuple[float, float] | None = None
    integer: tuple[int, int] | None = Field(None, alias="int")
    choice: list[Any] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_kind(self) -> Dimension:
        given = [k for k in ("log_uniform", "uniform", "integer", "choice") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of `log_uniform = [low, high]`, `uniform = [low, high]`, "
                             "`int = [low, high]` or `choice = [...]`")
        bounds = self.log_uniform or self.uniform or self.integer
        if bounds is not None and not bounds[0] < bounds[1]:
            raise ValueError(f"the range [{bounds[0]}, {bounds[1]}] is empty: low must be below high")
        if self.log_uniform is not None and self.log_uniform[0] <= 0:
            raise ValueError("`log_uniform` needs a positive low end")
        return self


class Tune(Table):
    """`ftc tune`: a search over spec keys, each trial an ordinary (cached) training stage,
    chosen by a validation metric. Keys with a dot (`"train.learning_rate" = {...}`) are the
    search space."""

    trials: Positive = Field(20, description="Trials to finish (complete or pruned); a rerun with more continues.")
    metric: str = Field("loss", description="The validation metric to optimise: `loss` or one the task "
                        "evaluates during training (classification: accuracy, f1; token-classification: f1).")
    direction: Literal["minimize", "maximize"] | None = Field(
        None, description="Default: minimize for loss and perplexity, else maximize.")
    sampler: Literal["tpe", "random"] = Field("tpe", description="Optuna's sampler (TPE, or uniform random).")
    pruner: Literal["median", "hyperband", "none"] = Field(
        "median", description="Stop a trial early when its validation metric trails: below the median of earlier "
        "trials at the same step, or by Hyperband's successive halving.")
    startup_trials: Positive = Field(2, description="Trials that run to the end before any is pruned.")
    space: dict[str, Dimension] = Field(default_factory=dict, description="Spec key → what to search.")

    @model_validator(mode="before")
    @classmethod
    def _dotted_keys_are_the_space(cls, v: Any) -> Any:
        if isinstance(v, dict):
            dotted = {k: x for k, x in v.items() if "." in k}
            v = {k: x for k, x in v.items() if "." not in k} | {"space": {**v.get("space", {}), **dotted}}
        return v

    @property
    def minimize(self) -> bool:
        return self.direction == "minimize" if self.direction else self.metric in ("loss", "perplexity")


def spec_field(path: str) -> Any:
    """The schema field a dotted key names (`train.lora.r`), or None when there is none."""
    model: Any = Spec
    field = None
    for part in path.split("."):
        fields = model.model_fields if isinstance(model, type) and issubclass(model, BaseModel) else {}
        field = fields.get(part) or next((f for f in fields.values() if f.alias == part), None)
        if field is None:
            return None
        model = next((a for a in getattr(field.annotation, "__args__", ()) if isinstance(a, type) and
                      issubclass(a, BaseModel)), field.annotation)
    return field


class Spec(Table):
    project: Project = Field(default_factory=Project)
    model: ModelSpec
    data: Data
    tokenize: Tokenize = Field(default_factory=Tokenize)
    train: Train = Field(default_factory=Train)
    eval: Eval = Field(default_factory=Eval)
    export: Export = Field(default_factory=Export)
    tune: Tune | None = None

    _root: Path = PrivateAttr(default_factory=Path.cwd)
    _text: str | None = PrivateAttr(default=None)  # the TOML as written, for reports

    @model_validator(mode="after")
    def _task_fits_data(self) -> Spec:
        from ftc import tasks  # the task modules import this schema

        task = tasks.get(self.model.task)
        for key, value in task.train_defaults.items():
            if key not in self.train.model_fields_set:
                self.train.__dict__[key] = value  # a default, so not among the keys the spec set
        task.check_spec(self)
        early = self.train.early_stopping
        if early is not None and early.metric not in task.stop_metrics:
            raise ValueError(f"`train.early_stopping.metric = \"{early.metric}\"` does not apply to "
                             f"`model.task = \"{task.name}\"`, which stops on {list(task.stop_metrics)}")
        if wrong := [m for m in self.eval.metrics if m not in task.metrics]:
            raise ValueError(f"`eval.metrics` {wrong} do not apply to `model.task = \"{task.name}\"`, "
                             f"whose metrics are {list(task.metrics)}")
        if self.eval.judge and not task.judged:
            raise ValueError(f"`eval.judge` scores a policy's answers against the base's; `model.task = "
                             f"\"{task.name}\"` generates none to judge (`preference` does)")
        if self.train.preference is not None and not task.reads_pairs:
            raise ValueError(f"`train.preference` sets the loss of preference pairs; `model.task = \"{task.name}\"` "
                             "trains on none (`reward-model` and `preference` do)")
        for i, src in enumerate(self.data.sources):
            if not task.reads_pairs and (used := [k for k in PAIR_COLUMNS if getattr(src.columns, k) is not None]):
                raise ValueError(f"`data.sources[{i}].columns` maps {', '.join(used)}: columns of preference pairs, "
                                 f"which `model.task = \"{task.name}\"` does not read (`reward-model` and "
                                 "`preference` do)")
        if self.train.distill and task.distills is None:
            raise ValueError(f"`train.distill` distils a causal LM's next-token or a classifier's class "
                             f"distribution; `model.task = \"{task.name}\"` has neither")
        if (self.tokenize.add_tokens or self.tokenize.add_tokens_file) and self.train.method not in VOCAB_METHODS:
            raise ValueError(f"`tokenize.add_tokens` gives the model new embedding rows, which `train.method = "
                             f"\"{self.train.method}\"` leaves untrained: use one of {list(VOCAB_METHODS)}")
        if self.tune is not None:
            if self.tune.metric not in task.stop_metrics:
                raise ValueError(f"`tune.metric = \"{self.tune.metric}\"` is not a validation metric of `model.task = "
                                 f"\"{task.name}\"`, which reports {list(task.stop_metrics)}")
            for path in self.tune.space:
                field = spec_field(path)
                if field is None or path.split(".")[0] in ("tune", "project") or (
                        isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
                    raise ValueError(f"`tune` searches `{path}`, which is not a setting of the spec: give the dotted "
                                     "path of one value, e.g. \"train.learning_rate\" or \"train.lora.r\"")
        return self

    @property
    def root(self) -> Path:
        """Directory that relative paths in the spec are relative to."""
        return self._root

    @property
    def text(self) -> str:
        """The spec as the user wrote it (TOML), or its canonical JSON when built in code."""
        import json

        return self._text if self._text is not None else json.dumps(self.model_dump(mode="json", by_alias=True),
                                                                    indent=2)

    def resolve(self, path: str) -> Path:
        return (self._root / Path(path).expanduser()).resolve() if not path.startswith("pkg://") else Path(path)


def _check_regex(pattern: str) -> None:
    from ftc._data import check_regex  # the engine that will run it decides

    if (problem := check_regex(pattern)) is not None:
        raise ValueError(f"invalid regex {pattern!r}: {problem.splitlines()[-1].strip()}")
