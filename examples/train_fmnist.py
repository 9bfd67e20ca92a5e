"""Train the plain Fashion-MNIST CNN with the Python API, then turn it into an IC CNN fine-tuned by WLD.

    python examples/train_fmnist.py            # ~2 minutes on 2 CPU cores

The same runs from the command line:

    ic-networks train --recipe scratch-fmnist --model fmnist_cnn --subset 10000 --out runs/ex/plain
    ic-networks train --recipe wld-fmnist --teacher runs/ex/plain/model.pt --subset 10000 --out runs/ex/wld
"""

import torch

from ic_networks.models.cnn import fmnist_cnn
from ic_networks.training import Trainer, build_datasets, get_recipe, make_student

data = build_datasets("fmnist", augment=False, train_subset=10000)  # the Debian package's IDX files

torch.manual_seed(0)
teacher = fmnist_cnn()
scratch = get_recipe("scratch-fmnist", model="fmnist_cnn", epochs=2)
Trainer(teacher, scratch, data.train, data.val, "runs/example/plain", overwrite=True).fit()

wld = get_recipe("wld-fmnist", epochs=1)
student = make_student(teacher, wld)  # IC layers with alpha = 0: exactly the teacher's function
summary = Trainer(student, wld, data.train, data.val, "runs/example/wld", teacher=teacher, overwrite=True).fit()
print(f"WLD student: top-1 {summary['val_top1']:.2f}%  (curves in runs/example/wld/curves.png)")
