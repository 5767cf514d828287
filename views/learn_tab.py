"""Learn tab: short explanations a teacher can talk through, with pictures from real runs."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from seqmatch_engine.interfaces.queries import learn_pictures, learn_studies

SECTIONS = [
    ("What is dataset distillation?",
     "Train a network on a **tiny synthetic training set** (a few *images per class*, IPC) and get nearly "
     "the accuracy of training on the whole dataset. The synthetic pixels are *learned*: they are "
     "optimised so that training on them behaves like training on the real data. Compare the learned "
     "images with a **random real subset** of the same size: that is the baseline every method must beat."),
    ("What does MTT match?",
     "*Matching Training Trajectories* first trains **expert** networks on real data and saves their "
     "weights after every epoch. One distillation step: start a *student* at an expert's weights at "
     "epoch *t*, train it for *N* quick steps on the synthetic images (with a learnable step size α), and "
     "measure how far it lands from where the expert was *M* epochs later:\n\n"
     "L = ‖θ_student − θ*_{t+M}‖² / ‖θ*_t − θ*_{t+M}‖²\n\n"
     "The gradient of L flows back through all N steps into the pixels. L = 1 means the synthetic data "
     "moved the student no closer than standing still; L → 0 means it reproduces the expert's progress."),
    ("What is coupling, and what does SeqMatch change?",
     "Static MTT learns **all** images at once. They all receive the same kind of gradient, dominated by "
     "the early, easy features networks learn first, so they become *coupled*: many images encode the "
     "same thing, and the features networks learn **late** in training are missing. The effect grows "
     "with IPC.\n\n**SeqMatch** splits the budget into K subsets and learns them **one after another**: "
     "S₁ against ordinary experts; then S₂ against experts that were first trained on S₁, so S₂ can only "
     "help by teaching what S₁ does not; and so on. Earlier subsets stay frozen. Evaluation trains a "
     "fresh net on S₁, then on S₁∪S₂, …, each with its learned step size."),
    ("A fair comparison: budget and headroom",
     "**Same budget.** In the authors' code every SeqMatch subset is its own distillation run, as long as static "
     "MTT's whole run: every image gets the same number of updates and the compute is about equal. That is the "
     "default here (*per image*); giving static MTT the sum of the subsets' iterations (*total*) doubles its "
     "updates per image at K = 2.\n\n"
     "**Headroom.** SeqMatch can only add what the experts know and static MTT misses, so the experts must end "
     "clearly above static MTT at that IPC; the paper also ties coupling to larger IPC. On a laptop's small "
     "presets the experts barely beat static MTT, so a single run there is a demonstration, not evidence: the "
     "**Studies** tab pairs both methods over several seeds and IPCs and shows the paired difference."),
    ("Soft labels and DATM",
     "**DATM** keeps MTT's matching but lets the *labels* learn too: each synthetic image carries a soft label "
     "(a probability over classes, started from what the experts believe about that image) that the same matching "
     "loss improves. It also starts from real images the experts classify correctly and moves the window of "
     "matched epochs later as the run goes on, so a large set learns the experts' later, harder knowledge, the "
     "problem SeqMatch attacks by splitting the set.\n\n"
     "**Fair scores.** A soft label is partly a teacher's knowledge: random real images with the same experts' "
     "soft labels already score far above hard-labelled ones. So a soft-label method is judged by its **gain "
     "over random real images trained the same way**, and also evaluated with its top classes as hard labels. "
     "In the grids, the bar under each image is its label's confidence: teal when its top class is the row's "
     "class, red (with that class) when it is another."),
    ("What the live view shows",
     "Each panel is one subset: a row per class, a column per image. The panel marked *learning* is the "
     "one being optimised; *frozen* panels are finished. Below: the matching loss (lower is better), the "
     "learned step size α, and the start epoch *t* drawn at each iteration. α learns slowly (lr_lr 1e-5): in "
     "short runs it moves by about a percent, so its curve is nearly flat; that is expected."),
    ("What the diagnostics show",
     "- **G1 gradient similarity**: cosine between the mean gradients of different subsets. High values "
     "mean the subsets are pushed the same way: coupling.\n"
     "- **G2 matching error by expert epoch**: how well the finished set reproduces each stretch of "
     "training of held-out experts, each subset on trajectories made the way its own experts were made "
     "(stage-1 experts; experts pre-trained on S₁, …). The paper argues static sets fail on late knowledge.\n"
     "- **G3 feature map**: real and synthetic images in the feature space of experts at several epochs.\n"
     "- **G4 easy vs hard**: accuracy on test images that experts learn early (easy) or late (hard)."),
]


@dataclass
class LearnTab:
    def build(self) -> None:
        for title, text in SECTIONS:
            with gr.Accordion(title, open=title == SECTIONS[0][0]):
                gr.Markdown(text)
        for study in learn_studies():
            with gr.Accordion(study.title, open=False):
                gr.Markdown(study.findings)
                if study.table:
                    gr.Markdown(study.table, elem_classes="sm-study-table")
                for first in range(0, len(study.figures), 2):  # two a row, as the Studies tab lays them out
                    with gr.Row():
                        for path in study.figures[first:first + 2]:
                            gr.Image(str(path), label=path.stem.replace("-", " "), show_label=False,
                                     interactive=False, buttons=["fullscreen"])
        pictures = learn_pictures()
        if pictures:
            gr.Gallery([(str(p), p.stem.replace("_", " ")) for p in pictures],
                       label="What learned images look like (single cpu-demo runs: pictures, not evidence)",
                       columns=2, rows=-(-len(pictures) // 2), height=None, allow_preview=True, object_fit="contain")
