from pathlib import Path
from PIL import Image
src = Path('/work/shared/data/cub100'); dst = Path('/work/main/.devdata/cub100_train')
ids = {l.split()[0]: l.split()[1] for l in (src/'image_class_labels.txt').read_text().split('\n') if l.strip()}
keep_imgs = [l for l in (src/'images.txt').read_text().split('\n') if l.strip() and int(ids[l.split()[0]]) <= 100]
keep = {l.split()[0] for l in keep_imgs}
dst.mkdir(parents=True, exist_ok=True)
for name in ('images.txt','image_class_labels.txt','train_test_split.txt'):
    lines = [l for l in (src/name).read_text().split('\n') if l.strip() and l.split()[0] in keep]
    (dst/name).write_text('\n'.join(lines)+'\n')
(dst/'classes.txt').write_text('\n'.join(l for l in (src/'classes.txt').read_text().split('\n') if l.strip() and int(l.split()[0])<=100)+'\n')
for l in keep_imgs:
    rel = l.split()[1]; o = dst/'images'/rel; o.parent.mkdir(parents=True, exist_ok=True)
    im = Image.open(src/'images'/rel).convert('RGB'); im = im.resize((146,146), Image.BILINEAR); im.save(o, quality=90)
print(len(keep_imgs))
